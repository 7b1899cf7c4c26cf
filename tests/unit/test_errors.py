"""Error classification: every database error is transient, a missing reference, or a data error."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from pipeline.errors import DataError, MissingReference, TransientError, classify, sqlstate


def wrapped(error: Exception) -> sa_exc.DBAPIError:
    """The error as SQLAlchemy hands it over."""
    return sa_exc.DBAPIError("INSERT …", {}, error)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (asyncpg.exceptions.DeadlockDetectedError("deadlock detected"), TransientError),
        (asyncpg.exceptions.SerializationError("could not serialize"), TransientError),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), TransientError),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), TransientError),
        (asyncpg.exceptions.TooManyConnectionsError("too many"), TransientError),
        (asyncpg.exceptions.QueryCanceledError("statement timeout"), TransientError),
        (asyncpg.exceptions.LockNotAvailableError("lock"), TransientError),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"), TransientError),
        (asyncpg.exceptions.UndefinedColumnError("no such column"), TransientError),
        (asyncpg.exceptions.UndefinedTableError("no such table"), TransientError),
        (asyncpg.exceptions.ForeignKeyViolationError("fk"), MissingReference),
        (asyncpg.exceptions.CheckViolationError("check"), DataError),
        (asyncpg.exceptions.NotNullViolationError("null"), DataError),
        (asyncpg.exceptions.StringDataRightTruncationError("too long"), DataError),
        (asyncpg.exceptions.InvalidTextRepresentationError("bad input"), DataError),
        (asyncpg.exceptions.NumericValueOutOfRangeError("out of range"), DataError),
        (asyncpg.exceptions.UntranslatableCharacterError("\\u0000"), DataError),
    ],
)
def test_database_errors_are_classified(error: Exception, expected: type[Exception]) -> None:
    classified = classify(wrapped(error))
    assert type(classified) is expected
    assert str(error) in str(classified)


def test_connection_failures_are_transient() -> None:
    assert isinstance(classify(ConnectionResetError("reset by peer")), TransientError)
    assert isinstance(classify(OSError("connection refused")), TransientError)
    assert isinstance(classify(TimeoutError()), TransientError)


def test_sqlstate_is_read_through_the_wrapper() -> None:
    assert sqlstate(wrapped(asyncpg.exceptions.CheckViolationError("x"))) == "23514"
    assert sqlstate(ValueError("no state")) is None
