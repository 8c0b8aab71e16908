"""A new MLflow SQLite store per test, without migrating each one.

MLflow builds a new SQLite store by running its whole Alembic migration history, about 5 s on a
2-core machine, and every training test starts from a store of its own. So the first call builds one
store, with MLflow itself, and later calls copy that file: the same schema, at the same revision, that
MLflow would have made. The only row that names a path, the Default experiment's artifact location,
is pointed at the copy's folder, where MLflow would have put it.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import sqlite3
import tempfile
from pathlib import Path


@functools.cache
def _template() -> Path:
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="mlflow-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    db = folder / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # creates and migrates the store
    return db


def sqlite_store(db: Path, default_artifacts: str | None = None) -> str:
    """The tracking URI of a SQLite store at `db`: an empty, migrated store unless `db` already exists.

    `default_artifacts`: the Default experiment's artifact location, as the process that would have
    made the store sets it (``mlflow server --artifacts-destination``: ``mlflow-artifacts:/0``);
    by default ``mlruns/0`` beside `db`, as a client in that folder sets it.
    """
    db = Path(db)
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template(), db)
        with sqlite3.connect(db) as con:
            con.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                (default_artifacts or str(db.parent / "mlruns" / "0"),),
            )
        con.close()
    return f"sqlite:///{db}"
