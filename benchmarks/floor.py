"""The smallest DICOMweb answer Flask and gunicorn give: an empty QIDO-RS result.

:func:`benchmarks.limits.wsgi_floor` serves this app with the worker class and client our
server's measurements use; no QIDO-RS request of ours can be faster than it.
"""

from __future__ import annotations

from flask import Flask, Response

app = Flask(__name__)


@app.get("/dicom-web/studies")
def studies() -> Response:
    return Response("[]", mimetype="application/dicom+json")
