"""Launch psanet: the same launcher as run_pspnet.py with --model_name psanet as the default."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segzoo.engine.launch import main  # noqa: E402

sys.exit(main(default_model="psanet"))
