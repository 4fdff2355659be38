"""Schema changes across shards: versioned migrations, each shard's version tracked.

A :class:`Migration` is a version number (1, 2, 3 ... with no gaps) and its statements. The
:class:`Migrator` brings every shard to the target version, one shard and one migration at a
time; each migration runs in one transaction together with the update of the shard's
``schema_version`` (kept in the shard's own metadata table), so a crash leaves every shard
exactly at some version and a rerun continues from there. A failing migration stops that
shard at the previous version and is reported; the other shards still advance (or, with
``stop_on_error``, the run stops).

Routing safety: routers built with ``schema_versions=(low, high)`` refuse shards outside that
range (:class:`~phalanx.sharding.SchemaVersionUnsupported`). Roll out expand/contract style:
deploy an application supporting both versions, migrate, then drop the old version.

Migration files for the CLI are ``<version>_<name>.sql``, statements separated by ``;`` at a
line end.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from phalanx.errors import BadRequest
from phalanx.sharding.backend import ShardBackend, Statement

__all__ = ["MIGRATIONS_MAX", "Migration", "MigrationReport", "Migrator", "load_migrations"]

#: Most migrations one set holds.
MIGRATIONS_MAX: Final = 10_000
_FILE_NAME: Final = re.compile(r"(\d+)_([A-Za-z0-9_\-]+)\.sql")
_STATEMENT_END: Final = re.compile(r";\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


@dataclass
class MigrationReport:
    """Per shard: the version before and after, and the error that stopped it, if any."""

    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def load_migrations(directory: str | Path) -> list[Migration]:
    """Read ``<version>_<name>.sql`` files from ``directory``."""
    found = []
    for path in sorted(Path(directory).glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise BadRequest(f"migration file {path.name!r}: expected <version>_<name>.sql")
        text = path.read_text(encoding="utf-8")
        statements = tuple(s.strip() for s in _STATEMENT_END.split(text) if s.strip())
        found.append(Migration(int(match.group(1)), match.group(2), statements))
    return found


def _check(migrations: Sequence[Migration]) -> list[Migration]:
    ordered = sorted(migrations, key=lambda m: m.version)
    if len(ordered) > MIGRATIONS_MAX:
        raise BadRequest(f"migrations: more than MIGRATIONS_MAX ({MIGRATIONS_MAX})")
    versions = [m.version for m in ordered]
    if versions != list(range(1, len(ordered) + 1)):
        raise BadRequest(f"migrations: versions must be 1..N without gaps, got {versions}")
    return ordered


class Migrator:
    """Applies ``migrations`` to every backend (see the module docstring)."""

    def __init__(
        self, backends: Mapping[str, ShardBackend], migrations: Sequence[Migration]
    ) -> None:
        self.backends = dict(backends)
        self.migrations = _check(migrations)

    @property
    def latest(self) -> int:
        return len(self.migrations)

    async def versions(self) -> dict[str, int]:
        return {
            name: (await backend.meta()).get("schema_version", 0)
            for name, backend in sorted(self.backends.items())
        }

    async def migrate(
        self,
        target: int | None = None,
        *,
        stop_on_error: bool = False,
        on_applied: Callable[[str, Migration], None] | None = None,
    ) -> MigrationReport:
        """Bring every shard up to ``target`` (default: the latest)."""
        goal = self.latest if target is None else target
        if not 0 <= goal <= self.latest:
            raise BadRequest(f"target: 0..{self.latest}, got {goal}")
        report = MigrationReport()
        for name, backend in sorted(self.backends.items()):
            version = (await backend.meta()).get("schema_version", 0)
            report.before[name] = version
            if version > goal:
                report.errors[name] = f"at version {version}, beyond the target {goal}"
            for migration in self.migrations[version:goal]:
                upsert = (
                    "UPDATE phalanx_shard_meta SET value = ? "
                    "WHERE name = 'schema_version' AND value = ?"
                )
                statements: list[Statement] = [(sql, ()) for sql in migration.statements]
                statements.append((upsert, (migration.version, migration.version - 1)))
                try:
                    counts = await backend.run(statements)
                except Exception as exc:
                    report.errors[name] = f"migration {migration.version} ({migration.name}): {exc}"
                    break
                if counts[-1] != 1:
                    report.errors[name] = "schema_version changed underneath: another migrator?"
                    break
                version = migration.version
                if on_applied is not None:
                    on_applied(name, migration)
            report.after[name] = version
            if stop_on_error and name in report.errors:
                break
        return report
