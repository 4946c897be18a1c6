"""placeholder: being written"""

from flask import Blueprint

blueprint = Blueprint("stow", __name__)
