"""Launch PSPNet training or evaluation with the original ModelZoo flags (any --model_name works).

    python run_scripts/run_pspnet.py --device cuda --distributed False --autocast True --model_name pspnet \
        --num_classes 21 --dataset_path /data/voc --crop_size 513 --batch_size 8 --epoch 50
    python run_scripts/run_pspnet.py --device cuda --distributed True --nproc_per_node 4 --master_port 29505 ...
    python run_scripts/run_pspnet.py --device cpu --dataset demo --dry_run True   # print the command only

See runtime/launch.py for the commands it builds (multi-node included) and README.md for every flag.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segzoo.engine.launch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_model="pspnet"))
