"""Users and roles of the RESP front door: who may run which command (docs/security.md).

A user has a role, read, write or admin, each one including the one before it; a command
needs a level (none for connection commands, else read, write or admin), computed once from
its flags in the command table. Passwords are kept as SHA-256 digests, as Redis ACL keeps
them, and may be given as `#<64 hex digits>` so that no clear password sits in a file.
"""
import hashlib
import hmac
import re
from dataclasses import dataclass, field

from kvnet.errors import ConfigError

__all__ = ["User", "NONE", "READ", "WRITE", "ADMIN", "ROLES", "digest_of", "parse_users",
           "required_level", "acl_rules"]

NONE, READ, WRITE, ADMIN = 0, 1, 2, 3
ROLES = {"read": READ, "write": WRITE, "admin": ADMIN}
_USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HEX_DIGEST = re.compile(r"^#[0-9a-fA-F]{64}$")
# Commands that need admin beyond those flagged `admin`: they empty the whole keyspace.
_ADMIN_NAMES = frozenset({"flushdb", "flushall"})
# ...and read, though not flagged readonly: what a node reports about itself.
_READ_NAMES = frozenset({"info"})


def digest_of(password) -> str:
    """The SHA-256 hex digest a password is kept as: `#<hex>` is a digest already."""
    if isinstance(password, str):
        if _HEX_DIGEST.match(password):
            return password[1:].lower()
        password = password.encode()
    return hashlib.sha256(password).hexdigest()


@dataclass(frozen=True)
class User:
    """A named user: its role (read, write or admin) and the SHA-256 digest of its password."""

    name: str
    role: str
    digest: str = field(repr=False)

    @classmethod
    def make(cls, name, role, password, setting="users"):
        if not isinstance(name, str) or not _USER_NAME.match(name):
            raise ConfigError(f"{setting}: user name {name!r} must be 1-64 letters, digits, "
                              "'_', '.', '@' or '-'")
        if name == "default":
            raise ConfigError(f"{setting}: 'default' is the default user: give its password "
                              "with requirepass")
        if role not in ROLES:
            raise ConfigError(f"{setting}: user {name}: role {role!r} must be one of "
                              f"{', '.join(ROLES)}")
        if not isinstance(password, str) or not password:
            raise ConfigError(f"{setting}: user {name}: needs a password (clear text or "
                              "#<sha256 hex>)")
        if password.startswith("#") and not _HEX_DIGEST.match(password):
            raise ConfigError(f"{setting}: user {name}: a password starting with '#' must be "
                              "'#' and the 64 hex digits of its SHA-256")
        return cls(name, role, digest_of(password))

    @property
    def level(self) -> int:
        return ROLES[self.role]

    def check(self, password: bytes) -> bool:
        return hmac.compare_digest(digest_of(password), self.digest)


def parse_users(value, setting="users") -> tuple:
    """The `users` setting as a tuple of User: a TOML table {name: {role, password}}, a list
    of those entries' text, or text `name:role:password` entries separated by commas."""
    if isinstance(value, str):
        value = [x for x in value.split(",") if x.strip()]
    if isinstance(value, dict):
        items = []
        for name, entry in value.items():
            if not isinstance(entry, dict) or set(entry) - {"role", "password"}:
                raise ConfigError(f"{setting}: user {name}: must be a table with role and "
                                  "password")
            items.append(User.make(name, entry.get("role"), entry.get("password"), setting))
    elif isinstance(value, (list, tuple)):
        items = []
        for entry in value:
            if isinstance(entry, User):
                items.append(entry)
                continue
            parts = str(entry).strip().split(":", 2)
            if len(parts) != 3:
                raise ConfigError(f"{setting}: {str(entry).split(':')[0]!r}...: an entry is "
                                  "name:role:password")
            items.append(User.make(parts[0], parts[1], parts[2], setting))
    else:
        raise ConfigError(f"{setting}: must be a table of users or name:role:password entries")
    names = [u.name for u in items]
    if len(set(names)) != len(names):
        raise ConfigError(f"{setting}: a user name appears twice")
    return tuple(items)


def required_level(cmd) -> int:
    """The level a command (a table entry, kvnet/resp/commands.py) needs."""
    name = cmd.name
    if "admin" in cmd.flags or "@admin" in cmd.categories or name in _ADMIN_NAMES:
        return ADMIN
    if "write" in cmd.flags:
        return WRITE
    if "readonly" in cmd.flags or name in _READ_NAMES:
        return READ
    return NONE


_RULES = {READ: "-@all +@read +@connection +info",
          WRITE: "-@all +@read +@write +@connection +info",
          ADMIN: "+@all"}


def acl_rules(name: str, digest, level: int) -> str:
    """The ACL LIST line of a user, in Redis' syntax."""
    password = "nopass" if digest is None else f"#{digest}"
    return f"user {name} on {password} ~* &* {_RULES[level]}"
