"""The old name of check_ml_backend.py, which the README once gave: runs it."""
import pathlib
import runpy

runpy.run_path(str(pathlib.Path(__file__).with_name("check_ml_backend.py")), run_name="__main__")
