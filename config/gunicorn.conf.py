# gunicorn configuration for the DICOMweb listener, for sites that run gunicorn directly:
#
#   DICOMWEB_CONFIG=/etc/dicomweb-server/dicomweb-server.toml \
#       gunicorn -c config/gunicorn.conf.py
#
# It takes bind address, workers, threads and timeouts from the archive's own settings
# (http.host, http.port, http.workers, http.threads, http.timeout), exactly as
# `dicomweb-server web` does, so the two ways of starting agree.  Why these choices:
# - gthread workers: a thread per request lets one worker keep answering searches while
#   others stream multi-gigabyte STOW uploads or study downloads;
# - timeout = graceful_timeout = http.timeout (300 s): a worker busy with a long transfer is
#   not killed, and on SIGTERM in-flight uploads get that long to finish.
# Run `dicomweb-server db upgrade` once before starting several workers on a new index.
from dicomweb_server.config import load_settings
from dicomweb_server.server import gunicorn_options

wsgi_app = "dicomweb_server.wsgi:app"
globals().update(gunicorn_options(load_settings()))
