#!/usr/bin/env bash
# Build autoexp.pyz, the one file users copy to a login node: a zipapp of autoexp.py whose
# entry point runs autoexp.main(). The build is reproducible: fixed timestamps, modes and
# entry order, and entries stored rather than deflated, so the bytes depend only on
# autoexp.py (building twice from one tree gives identical files).
#
#   bash build_pyz.sh [OUTPUT]      (default: ./autoexp.pyz)
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-autoexp.pyz}"
"${PYTHON:-python3}" - "$out" <<'PY'
import os
import sys
import zipfile

out = sys.argv[1]
entries = [
    ("__main__.py", b"import sys\n\nimport autoexp\n\nsys.exit(autoexp.main())\n"),
    ("autoexp.py", open("autoexp.py", "rb").read()),
]
tmp = out + ".tmp"
with open(tmp, "wb") as f:
    f.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3               # unix, whatever builds it
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
os.chmod(tmp, 0o755)
os.replace(tmp, out)
PY
echo "built $out"
