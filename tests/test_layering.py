"""The archive core must not depend on either protocol front."""

import subprocess
import sys


def test_archive_imports_neither_flask_nor_pynetdicom() -> None:
    code = (
        "import sys, dicomweb_server.archive as a; "
        "bad = [m for m in ('flask', 'pynetdicom', 'werkzeug') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
