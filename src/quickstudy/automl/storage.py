"""Where a search's study lives: parse ``--storage`` and open it as an Optuna storage.

Accepted forms (``quickstudy search --storage``):

* ``sqlite:///PATH``: one file (the default, ``OUT/study.db``); fine for workers on one machine.
* ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`` (also ``postgres://``): a PostgreSQL server, for
  workers on many machines; the driver is psycopg (``pip install 'quickstudy[automl]'``). Without a
  password in the URL, libpq's own sources apply (``PGPASSWORD``, ``~/.pgpass``).
* ``mysql+DRIVER://...`` and other SQLAlchemy URLs Optuna accepts, with their driver installed.
* ``journal:PATH``: Optuna's journal file (an append-only log with a lock file), for a shared file
  system such as NFS where SQLite's locking is unreliable and no database server is at hand.

Database storages get Optuna's heartbeat: each running trial records a heartbeat every ``heartbeat``
seconds, and a trial whose worker died (SIGKILL, a lost machine) is marked FAIL by the next worker that
asks for a trial once ``2 * heartbeat`` seconds have passed; it is then queued once more with the same
parameters. The journal storage has no heartbeat in Optuna: a killed worker's trial stays RUNNING there
(it is never the best, and the sampler steers away from it).
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._validation import check_int

__all__ = ["StudyStorage", "open_storage", "display_url", "default_storage", "KILLED_TRIAL_RETRIES"]

# A trial whose worker died is run again once: a pre-empted or lost machine should not cost the trial,
# but a configuration that kills its worker every time (memory) must not be retried for ever.
KILLED_TRIAL_RETRIES = 1

_POSTGRES_SCHEMES = ("postgresql", "postgres")
_FORMS = "sqlite:///PATH, postgresql://USER@HOST/DB, another SQLAlchemy database URL, or journal:PATH"


@dataclass
class StudyStorage:
    """An opened storage: the Optuna object, the URL to show (password hidden), its kind, and the
    heartbeat interval in seconds (``None`` where the storage has none)."""

    optuna_storage: Any
    url: str
    kind: str
    heartbeat: int | None


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: URLs end up in search.json, best.yaml and logs."""
    if url.startswith("journal:"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: nothing in it is known to be a password
        return url


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _database_url(url: str):
    """The SQLAlchemy URL to connect with: a bare ``postgresql://`` (or ``postgres://``) means psycopg 3,
    the driver the ``automl`` extra installs (SQLAlchemy's own default for it would be psycopg2)."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise ValueError(f"--storage {url!r}: not a storage URL; expected {_FORMS}") from None
    if parsed.drivername in _POSTGRES_SCHEMES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "postgresql+psycopg" and not _has_module("psycopg"):
        raise ValueError(f"--storage {display_url(url)}: PostgreSQL needs the psycopg driver: "
                         "pip install 'quickstudy[automl]'")
    return parsed


def _engine_kwargs(parsed) -> dict[str, Any]:
    if parsed.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 120}}  # concurrent workers wait for the lock instead of failing
    kwargs: dict[str, Any] = {"pool_pre_ping": True}  # a connection idle through a long trial may be gone
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": 30}  # an unreachable server fails, instead of hanging
    return kwargs


def _check_connection(url: str, parsed, kwargs: dict[str, Any]) -> None:
    """Connect once, so that a wrong host, password or path is one clear error, not a retried traceback."""
    import sqlalchemy
    import sqlalchemy.exc

    try:
        engine = sqlalchemy.create_engine(parsed, **kwargs)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as error:
        raise ValueError(f"--storage {display_url(url)}: no database driver for {parsed.drivername!r} "
                         f"({str(error).strip().splitlines()[0]}); install the one SQLAlchemy names for this "
                         "URL") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise ValueError(f"--storage {display_url(url)}: cannot connect: {reason}") from None
    finally:
        engine.dispose()


def _rdb_storage(url: str, heartbeat: int | None, attempts: int = 8):
    """An RDB storage with heartbeat; workers that start together race to create the schema of a fresh
    database, and the loser retries."""
    import optuna
    import sqlalchemy.exc

    parsed = _database_url(url)
    kwargs = _engine_kwargs(parsed)
    _check_connection(url, parsed, kwargs)
    options: dict[str, Any] = {}
    with warnings.catch_warnings():  # the heartbeat and its retry callback are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat:
            options = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat,
                       "heartbeat_stale_trial_callback":
                           optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=KILLED_TRIAL_RETRIES)}
    connect_url = parsed.render_as_string(hide_password=False)
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(connect_url, engine_kwargs=kwargs, **options)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable")


def _journal_storage(url: str):
    import optuna

    path = Path(url[len("journal:"):]).expanduser()
    if not str(path) or path.is_dir():
        raise ValueError(f"--storage {url!r}: journal:PATH needs a file path")
    if not path.parent.is_dir():
        raise ValueError(f"--storage {url!r}: folder {path.parent} does not exist")
    # The default lock (a symbolic link made with link(2)) is the one Optuna documents for NFS.
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def open_storage(url: str, heartbeat: int | None = 60) -> StudyStorage:
    """Open the storage ``url`` names (see the module's docstring for the forms).

    ``heartbeat``: seconds between a running trial's heartbeats on database storages (0 or ``None``: no
    heartbeat, so a killed worker's trial stays RUNNING)."""
    heartbeat = check_int("", "--heartbeat", 0 if heartbeat is None else heartbeat, minimum=0) or None
    if url.startswith("journal:"):
        return StudyStorage(_journal_storage(url), url, "journal", None)
    storage = _rdb_storage(url, heartbeat)
    return StudyStorage(storage, display_url(url), _database_url(url).get_backend_name(), heartbeat)
