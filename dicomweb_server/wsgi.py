"""WSGI entry point for running the DICOMweb app under a WSGI server of your choice.

``gunicorn -c config/gunicorn.conf.py`` uses it; settings come from ``DICOMWEB_CONFIG``
and ``DICOMWEB_*`` variables.  ``dicomweb-server web`` does the same without this module.
"""

from .config import load_settings
from .web import create_app

app = create_app(load_settings())
