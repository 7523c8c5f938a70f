# Every worker that unpickles one of our DoFns imports this package first: the place to tune the SDK worker. Only in
# a process that has Beam already (a worker, a pipeline's launcher, a test): a command that runs no pipeline
# (`journeys --help`, `journeys sql`) is spared Beam's import, about a second (pipelines/runners.py tunes a launcher
# that imported us first).
import sys

if "apache_beam" in sys.modules:
    from transforms.state_sizing import use_cheap_state_sizing

    use_cheap_state_sizing()
