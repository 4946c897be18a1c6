"""placeholder: being written"""

from flask import Blueprint

blueprint = Blueprint("qido", __name__)
