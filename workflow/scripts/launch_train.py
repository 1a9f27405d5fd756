"""Start one job's training processes on this node with torchrun (all nodes of a Slurm job step, or
`torchrun --standalone` locally) and pass Slurm's wall-time warning on to the trainer. See lmrepro.launch.

    python workflow/scripts/launch_train.py --nproc-per-node 2 --threads 4 -- workflow/scripts/train.py ...
"""

import sys

from lmrepro.launch import main

if __name__ == "__main__":
    sys.exit(main())
