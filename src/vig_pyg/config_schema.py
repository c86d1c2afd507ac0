"""The config mechanism shared by ``vig-pyg train`` and ``vig-pyg detect``.

A config is a dataclass of sections, each section a dataclass whose fields are its keys,
with their types and defaults. :class:`Schema` composes one from the defaults, a saved
config, a YAML file and ``--set section.key=value`` overrides. Values are parsed as YAML
(``[1, 2]``, ``null``, ``true``) and then converted to the key's type (:func:`coerce`),
so ``1e-3`` is a float even though YAML 1.1 reads it as a string. Every problem is a
one-line :class:`~vig_pyg.errors.ConfigError`; an unknown key names the valid ones, and a
key the chosen setting does not read (:class:`KeyReaders`, e.g. ``data.root`` with a
built-in data set) is an error unless it holds its default.

The schemas themselves are data: :mod:`vig_pyg.train.config` and
:mod:`vig_pyg.detection.config` declare their sections and checks on top of this module.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import yaml

from .errors import ConfigError, one_line

# ``handler(section_object, parts, value)`` takes the keys of a section that are not its
# fields: ``parts`` is the dotted key after the section name, split on the dots
ExtraKeys = Callable[[Any, list, Any], None]


class Sections:
    """Base of a config dataclass: its sections as plain containers and as YAML (the form
    of ``config.yaml``, ``--print-config`` and the config a checkpoint holds)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def keys_of(cls) -> list:
    """The keys of a section (or the sections of a config), in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def unknown_key(key: str, prefix: str, valid: list) -> ConfigError:
    """The error for ``prefix + key`` (prefix ``"section."`` or empty for a section name),
    with the closest valid key, if one is close, and the list of valid ones."""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    where = f"in '{prefix[:-1]}' " if prefix else ""
    return ConfigError(f"unknown config key '{prefix}{key}'{hint}; valid keys {where}are: "
                       + ", ".join(valid))


def _number_or_text(value: Any) -> Any:
    """List items: YAML 1.1 reads ``1e-3`` as text; such text becomes the number it spells,
    other text (a module name) stays text."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML value to ``typ`` (``bool``, ``int``, ``float``, ``str``, ``list``,
    ``dict`` or ``Optional`` of one), the annotated type of ``key``; raises ConfigError."""
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        inner = [a for a in typing.get_args(typ) if a is not type(None)][0]
        return coerce(value, inner, key)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                value = float(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if typ is list:
            if isinstance(value, tuple):
                value = list(value)
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, list):
                raise ValueError
            return [_number_or_text(v) for v in value]
        if typ is dict:
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        pass
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"config key '{key}' expects {name}, got {value!r}")


def parse_override(item: str) -> tuple:
    """``"section.key=value"`` -> ``("section.key", value)``, the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not KEY=VALUE (e.g. optim.lr=1e-3)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_yaml(path: str) -> dict:
    """The mapping in a YAML file (empty file: ``{}``); a missing, unreadable or broken
    file is a ConfigError."""
    try:
        with open(path) as fh:
            return yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found: check the path "
                          "(shipped configs: configs/demo.yaml, configs/cifar10.yaml, configs/imagenet.yaml)") from None
    except yaml.YAMLError as exc:
        first = one_line(exc)
        raise ConfigError(f"config file '{path}' is not valid YAML ({first}): fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read ({exc.strerror})") from None


class Schema:
    """How a config dataclass ``cls`` (a :class:`Sections`) is set, key by key.

    ``extra_keys`` maps a section name to the handler of the keys that section takes
    besides its fields (the training model section's model options); in any other section
    such a key is an error naming the valid ones.
    """

    def __init__(self, cls: type, extra_keys: Optional[Mapping[str, ExtraKeys]] = None):
        self.cls = cls
        self.sections = keys_of(cls)
        self.extra_keys = dict(extra_keys or {})

    def set(self, cfg, dotted: str, value: Any) -> None:
        """``section.key`` (or ``section.dictkey.entry``) = value, converted to the key's
        type; ``section`` = a mapping sets each of its keys."""
        parts = dotted.split(".")
        section = parts[0]
        if section not in self.sections:
            raise unknown_key(section, "", self.sections)
        obj = getattr(cfg, section)
        valid = keys_of(type(obj))
        if len(parts) == 1:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{section}' is a section; set its keys, e.g. "
                                  f"'{section}.{valid[0]}=...'")
            for k, v in value.items():
                self.set(cfg, f"{section}.{k}", v)
            return
        key = parts[1]
        if key not in valid:
            if section in self.extra_keys:
                self.extra_keys[section](obj, parts[1:], value)
                return
            raise unknown_key(key, section + ".", valid)
        typ = typing.get_type_hints(type(obj))[key]
        if len(parts) > 2:
            if typ is not dict:
                raise ConfigError(f"config key '{section}.{key}' has no sub-keys (got '{dotted}')")
            getattr(obj, key)[".".join(parts[2:])] = value
            return
        if typ is dict and isinstance(value, str):
            value = yaml.safe_load(value)
        setattr(obj, key, coerce(value, typ, f"{section}.{key}"))

    def apply_dict(self, cfg, data: Optional[dict], source: str = "config"):
        """Set every key of ``data``, a mapping of sections (a YAML file's or a saved
        config's); ``source`` names it in the errors. Returns ``cfg``."""
        if data is None:
            return cfg
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        for section, body in data.items():
            if section not in self.sections:
                raise unknown_key(str(section), "", self.sections)
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ConfigError(f"{source}: section '{section}' must be a mapping of keys")
            for key, value in body.items():
                self.set(cfg, f"{section}.{key}", value)
        return cfg

    def compose(self, path: Optional[str] = None, overrides: Optional[list] = None,
                base: Optional[dict] = None):
        """Defaults, then ``base`` (a saved config dict), then the YAML file at ``path``,
        then each ``overrides`` item (``section.key=value``); not yet validated."""
        cfg = self.cls()
        if base is not None:
            self.apply_dict(cfg, base, "saved config")
        if path is not None:
            self.apply_dict(cfg, load_yaml(path), path)
        for item in overrides or []:
            self.set(cfg, *parse_override(item))
        return cfg


def value_at(cfg, dotted: str) -> Any:
    """The value of ``section.key``."""
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def check_choices(cfg, choices: Mapping[str, tuple]) -> None:
    """Each ``section.key`` of ``choices`` holds one of its names."""
    for dotted, names in choices.items():
        value = value_at(cfg, dotted)
        if value not in names:
            raise ConfigError(f"{dotted}='{value}' is not supported: pick one of "
                              + ", ".join(names))


def check_positive(cfg, keys) -> None:
    for dotted in keys:
        value = value_at(cfg, dotted)
        if value <= 0:
            raise ConfigError(f"{dotted} must be positive, got {value}")


def check_not_negative(cfg, keys) -> None:
    for dotted in keys:
        value = value_at(cfg, dotted)
        if value < 0:
            raise ConfigError(f"{dotted} must not be negative, got {value}")


def defaults_of(cls) -> dict:
    """Each key of a section with its dataclass default (``default_factory`` called)."""
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return out


def yaml_text(value: Any) -> str:
    """A value as it is written in YAML and ``--set``: ``true``, ``null``, ``[16, 48]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


@dataclass(frozen=True)
class KeyReaders:
    """Which keys of one section each value of its selector key reads (e.g. which ``data.*``
    keys each ``data.dataset`` reads), as data for :func:`check_unused`.

    ``reads`` lists, per selector value, only the keys that depend on the value; a key in
    no entry is read by every value and never checked. ``also_read_by`` names keys that
    some other key of the section reads too once that other key differs from its default
    (``split_seed`` seeds ``train_subset``). ``about`` gives each value a few words for the
    error: why it reads no such key.
    """
    section: str
    selector: str
    reads: Mapping[str, tuple]
    about: Mapping[str, str]
    also_read_by: Mapping[str, tuple] = dataclasses.field(default_factory=dict)

    def dependent(self) -> list:
        """The keys some value reads and another does not, each once, in table order."""
        return list(dict.fromkeys(k for keys in self.reads.values() for k in keys))

    def readers_of(self, key: str) -> list:
        """The selector values that read ``key``."""
        return [value for value, keys in self.reads.items() if key in keys]


def check_unused(cfg, table: KeyReaders) -> None:
    """An option that does nothing is an error: a key of ``table.section`` that the chosen
    ``table.selector`` value does not read (nor a changed key of ``also_read_by``) must
    hold its dataclass default. Run after :func:`check_choices` on the selector."""
    obj = getattr(cfg, table.section)
    defaults = defaults_of(type(obj))
    changed = {k for k, v in defaults.items() if getattr(obj, k) != v}
    choice = getattr(obj, table.selector)
    read = set(table.reads[choice])
    read.update(k for k, users in table.also_read_by.items() if changed & set(users))
    for key in table.dependent():
        if key in changed and key not in read:
            raise ConfigError(_unused_message(table, obj, key, defaults[key]))


def _unused_message(table: KeyReaders, obj, key: str, default: Any) -> str:
    """``data.root=/x does nothing with data.dataset=digits (...): drop it (default null),
    or set data.dataset to one of ...``."""
    sec, sel = table.section, f"{table.section}.{table.selector}"
    choice = getattr(obj, table.selector)
    users = table.readers_of(key)
    fixes = [f"{sel}={users[0]}" if len(users) == 1 else f"{sel} to one of " + ", ".join(users)]
    fixes += [f"{sec}.{k}" for k in table.also_read_by.get(key, ())]
    return (f"{sec}.{key}={yaml_text(getattr(obj, key))} does nothing with {sel}={choice} "
            f"({table.about[choice]}): drop it (default {yaml_text(default)}), or set "
            + _either(fixes))


def _either(items: list) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


__all__ = ["Sections", "Schema", "ExtraKeys", "keys_of", "unknown_key", "coerce",
           "parse_override", "load_yaml", "value_at", "check_choices", "check_positive",
           "check_not_negative", "defaults_of", "yaml_text", "KeyReaders", "check_unused"]
