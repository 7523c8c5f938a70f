# Every worker that unpickles one of our DoFns imports this package first: the place to tune the SDK worker.
from transforms.state_sizing import use_cheap_state_sizing

use_cheap_state_sizing()
