"""placeholder: being written"""

from flask import Blueprint

blueprint = Blueprint("wado", __name__)
