"""A multi-frame instance far larger than the memory it may use is streamed to disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
from pathlib import Path
from dicomweb_server.archive import Archive, Origin
from dicomweb_server.config import load_settings
from tests.large_stream import LargeInstance

archive = Archive(load_settings(None, storage={"data_dir": Path(sys.argv[1])}))
source = LargeInstance(frames=int(sys.argv[2]))
result = archive.store(source, Origin("IMPORT"))
[stored] = archive.instances(result.study_uid)
frame = b"".join(archive.read_ranges(stored, stored.pixels.frame_ranges(1000)))
peak_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
print(json.dumps({"size": stored.size, "expected": source.size, "frames": stored.number_of_frames,
                  "frame_1000_byte": frame[0], "frame_len": len(frame), "peak_mb": peak_kb / 1024}))
"""


def test_a_1_gb_instance_is_stored_with_bounded_memory(tmp_path: Path) -> None:
    frames = 2048  # 512 x 512 x 16 bits each: 1 GiB of Pixel Data
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "data"), str(frames)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["size"] == report["expected"] > 1 << 30
    assert report["frames"] == frames
    assert report["frame_len"] == 512 * 512 * 2
    assert report["frame_1000_byte"] == 999 % 251
    # The interpreter with pydicom, numpy and SQLAlchemy loaded takes about 100 MB.
    assert report["peak_mb"] < 200, report
