"""Upload a run's offline MLflow records (kept while the server was out of reach):

    python launch/replay.py runs/demo/run/mlflow_offline --uri http://node:5000

Merges into the run the folder's run.json names, logging only what the server lacks (params it
does not hold, metric points it does not have, tags, data sets, artifacts), then sets the status the
run ended with. A run started offline (no run id) becomes a new run with its name, params and tags.
Safe to repeat. --uri defaults to the folder's server, else $MLFLOW_TRACKING_URI; an authenticated
server takes MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD from the environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from liere.orchestration.cli import command_parser, fail


def main(argv: list[str] | None = None) -> int:
    p = command_parser(__doc__)
    p.add_argument("folder", help="a run's mlflow_offline folder (or the run's out_dir)")
    p.add_argument("--uri", default=None, help="tracking server (default: the folder's run.json)")
    p.add_argument("--experiment", default=None, help="for a new run (default: the folder's)")
    p.add_argument("--run-id", default=None, help="merge into this run instead of the folder's")
    args = p.parse_args(argv)
    from mlflow.exceptions import MlflowException

    from liere.engine.tracking import replay

    try:
        replay(args.folder, uri=args.uri, experiment=args.experiment, run_id=args.run_id)
    except (FileNotFoundError, MlflowException) as err:  # no folder; the server refused (401, ...)
        return fail(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
