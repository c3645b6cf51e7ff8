"""Every environment variable the project reads: its name, default and meaning, in one place.

Code reads the environment only through this module (a test checks it), `landiff-engine --help`
lists the variables, and README's "Environment" section is checked against `markdown()`.
Standard library only: the TUI imports it (through engine.paths) at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TRUE_WORDS = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Variable:
    name: str
    default: str  # what applies when the variable is unset or empty, in words
    meaning: str
    tests_only: bool = False

    def raw(self) -> str | None:
        """The value, or None when unset or empty (an empty variable counts as unset)."""
        return os.environ.get(self.name) or None

    def path(self) -> Path | None:
        value = self.raw()
        return Path(value).expanduser() if value else None

    def flag(self) -> bool:
        return (self.raw() or "").lower() in TRUE_WORDS


HOME = Variable(
    "LANDIFF_HOME",
    "./ckpts when it holds LanDiff/, else weights/ in the data dir",
    "root of the model weights (LanDiff/, flan-t5-xxl/, tiny/)",
)
RUNTIME_DIR = Variable(
    "LANDIFF_RUNTIME_DIR",
    "the user runtime dir, e.g. /run/user/UID/landiff",
    "where the engine's socket engine.sock lives",
)
DATA_DIR = Variable(
    "LANDIFF_DATA_DIR",
    "the user data dir, e.g. ~/.local/share/landiff",
    "the job history landiff.db, outputs/, the engine's log, and the weights (weights/) unless LANDIFF_HOME "
    "or ./ckpts holds them",
)
CONFIG_DIR = Variable(
    "LANDIFF_CONFIG_DIR",
    "the user config dir, e.g. ~/.config/landiff",
    "where the TUI's config.toml lives (`landiff-tui --help` names it; see README's Configuration file)",
)
CACHE_DIR = Variable(
    "LANDIFF_CACHE_DIR",
    "the user cache dir, e.g. ~/.cache/landiff",
    "cache of the weight files' SHA-256 (so big files hash once)",
)
CHECKSUMS = Variable(
    "LANDIFF_CHECKSUMS",
    "the release's published MD5 list",
    "an MD5 list (md5sum format) that replaces the release's (mirrors, tests)",
)
LOG_LEVEL = Variable(
    "LANDIFF_LOG_LEVEL",
    "INFO",
    "level of the engine's log (engine.log in the data dir): DEBUG, INFO, WARNING or ERROR",
)
LOG_STDERR = Variable(
    "LANDIFF_LOG_STDERR",
    "1",
    "0: the engine logs to its file only, not to stderr too (a detached engine's stderr is a file)",
)
MAX_CONNECTIONS = Variable(
    "LANDIFF_MAX_CONNECTIONS",
    "256 (fewer when the open-files limit leaves less beside a reserve for the worker)",
    "client connections the engine holds at once; more are refused with a reply saying so",
)
MIN_FREE_MB = Variable(
    "LANDIFF_MIN_FREE_MB",
    "256",
    "MiB kept free on the outputs' disk: a job whose outputs would not fit beside them fails at its start",
)
HF_ENDPOINT = Variable(
    "HF_ENDPOINT",
    "https://huggingface.co",
    "the Hugging Face hub the weights download from (a mirror, a test server)",
)
HF_TOKEN = Variable(
    "HF_TOKEN",
    "none",
    "Hugging Face access token sent with downloads",
)
HF_HUB_OFFLINE = Variable(
    "HF_HUB_OFFLINE",
    "0",
    "1: never download; a complete weights folder runs as it is",
)
MODELSCOPE_ENDPOINT = Variable(
    "MODELSCOPE_ENDPOINT",
    "https://www.modelscope.cn",
    "the ModelScope server `weights download --source modelscope` fetches from (a mirror, a test server)",
)
MODELSCOPE_DOMAIN = Variable(
    "MODELSCOPE_DOMAIN",
    "www.modelscope.cn",
    "ModelScope's older way to name its server (a host; https:// is assumed); MODELSCOPE_ENDPOINT wins",
)
INDUCTOR_CACHE_DIR = Variable(
    "TORCHINDUCTOR_CACHE_DIR",
    "torchinductor/ in the user cache dir",
    "where torch.compile keeps compiled kernels between runs (--compile)",
)
NCCL_SOCKET_IFNAME = Variable(
    "NCCL_SOCKET_IFNAME",
    "lo",
    "the interface NCCL's bootstrap listens on for a --parallel group's GPUs (loopback: off the network)",
)
RAY_AUTH_MODE = Variable(
    "RAY_AUTH_MODE",
    "token for the engine",
    "Ray's own: `serve --ray` sets it to token and refuses any other value; the cluster's nodes need it too",
)
RAY_AUTH_TOKEN_PATH = Variable(
    "RAY_AUTH_TOKEN_PATH",
    "~/.ray/auth_token",
    "Ray's own: the file holding the Ray cluster's token (`serve --ray` refuses one other users can read)",
)
RAY_AUTH_TOKEN = Variable(
    "RAY_AUTH_TOKEN",
    "none",
    "Ray's own: the Ray cluster's token itself (a file is safer: an environment can be listed)",
)
ENGINE_ARGS = Variable(
    "LANDIFF_ENGINE_ARGS",
    "none",
    "the `landiff-engine serve` options an engine started by a client gets (the TUI, `submit`), as a "
    "shell would split them: e.g. `--gpus all --llm-device 3`; a restart keeps the running engine's own",
)
QUALITY_PROBE = Variable(
    "LANDIFF_QUALITY_PROBE",
    "on",
    "off: the engine does not measure each finished job (CLIP score, flicker, motion) by itself; "
    "`landiff-engine quality JOB` still does",
)
GOLDEN_DIRS = Variable(
    "LANDIFF_GOLDEN_DIRS",
    "../shared/golden",
    "colon-separated folders of the reference implementation's golden cases (parity tests)",
    tests_only=True,
)

VARIABLES = (
    HOME,
    RUNTIME_DIR,
    DATA_DIR,
    CONFIG_DIR,
    CACHE_DIR,
    CHECKSUMS,
    LOG_LEVEL,
    LOG_STDERR,
    MAX_CONNECTIONS,
    MIN_FREE_MB,
    HF_ENDPOINT,
    HF_TOKEN,
    HF_HUB_OFFLINE,
    MODELSCOPE_ENDPOINT,
    MODELSCOPE_DOMAIN,
    INDUCTOR_CACHE_DIR,
    NCCL_SOCKET_IFNAME,
    RAY_AUTH_MODE,
    RAY_AUTH_TOKEN_PATH,
    RAY_AUTH_TOKEN,
    ENGINE_ARGS,
    QUALITY_PROBE,
    GOLDEN_DIRS,
)
FALSE_WORDS = ("0", "false", "no", "off")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level() -> str:
    """LANDIFF_LOG_LEVEL's level name (`logging` takes names); a value that is no level is refused."""
    name = (LOG_LEVEL.raw() or "INFO").upper()
    if name not in LOG_LEVELS:
        raise ValueError(
            f"{LOG_LEVEL.name}={LOG_LEVEL.raw()!r} is not a log level; use one of {', '.join(LOG_LEVELS)}"
        )
    return name


def log_to_stderr() -> bool:
    return (LOG_STDERR.raw() or "1").lower() in TRUE_WORDS


def whole_number(variable: Variable, default: int, least: int = 0) -> int:
    """A variable holding a whole number (at least `least`), or its default when unset; ValueError naming it
    otherwise."""
    raw = variable.raw()
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        raise ValueError(f"{variable.name}={raw!r} is not a whole number of at least {least}")
    return value


def max_connections() -> int:
    return whole_number(MAX_CONNECTIONS, 256, least=1)


def min_free_bytes() -> int:
    return whole_number(MIN_FREE_MB, 256) * 2**20


def quality_probe_on() -> bool:
    """Whether the engine measures finished jobs by itself (LANDIFF_QUALITY_PROBE unset or not off)."""
    return (QUALITY_PROBE.raw() or "on").lower() not in FALSE_WORDS


def hub_endpoint() -> str:
    return (HF_ENDPOINT.raw() or "https://huggingface.co").rstrip("/")


def modelscope_endpoint() -> str:
    """MODELSCOPE_ENDPOINT (a URL), else MODELSCOPE_DOMAIN (a host; https:// assumed), else ModelScope's."""
    value = MODELSCOPE_ENDPOINT.raw() or MODELSCOPE_DOMAIN.raw() or "www.modelscope.cn"
    value = value.strip()
    if not value.startswith(("http://", "https://")):
        value = "https://" + value
    return value.rstrip("/")


def modelscope_endpoint_variable() -> str:
    """The variable that set the ModelScope endpoint now (the one to change), MODELSCOPE_ENDPOINT if none."""
    if MODELSCOPE_DOMAIN.raw() and not MODELSCOPE_ENDPOINT.raw():
        return MODELSCOPE_DOMAIN.name
    return MODELSCOPE_ENDPOINT.name


def help_epilog() -> str:
    """The variables as `landiff-engine --help` lists them (the parser keeps these line breaks)."""
    width = max(len(variable.name) for variable in VARIABLES)
    lines = ["environment variables:"]
    for variable in VARIABLES:
        if variable.tests_only:
            continue
        lines.append(f"  {variable.name:<{width}}  {variable.meaning}")
        lines.append(f"  {'':<{width}}  (default: {variable.default})")
    return "\n".join(lines)


def markdown() -> str:
    """The README's list of variables (a test holds README.md to it)."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for variable in VARIABLES:
        meaning = f"(tests only) {variable.meaning}" if variable.tests_only else variable.meaning
        lines.append(f"| `{variable.name}` | {variable.default} | {meaning} |")
    return "\n".join(lines)
