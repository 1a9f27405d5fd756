import sys
from pathlib import Path

# The trainer-process helpers live beside the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
