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


def sqlite_store(db: Path) -> str:
    """The tracking URI of a SQLite store at `db`: an empty, migrated store unless `db` already exists."""
    db = Path(db)
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template(), db)
        with sqlite3.connect(db) as con:
            con.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                (str(db.parent / "mlruns" / "0"),),
            )
        con.close()
    return f"sqlite:///{db}"
