#!/usr/bin/env bash
# A first launch without weights, end to end in a real terminal (issue 26): landiff-tui in a detached tmux
# session of 120x40, with private data, runtime, cache and config dirs and no weights anywhere; a prompt is
# typed from the moment the first frame shows, a key at a time, on while the engine starts and the
# first-run banner appears. Then the pane is captured and checked: the prompt whole in the prompt box, the
# banner shown, and no download started (nothing under the weights dir, no download in the engine's log).
#
#   bench/first_launch_tmux.sh            # exit status 0: every check passed
#   KEEP=1 bench/first_launch_tmux.sh     # keep the temp dir (pane, engine log) to look at
#
# Keys typed before the first frame (while Python starts, about 0.2-0.3 s) reach the terminal before the
# app reads it and are lost (README, first run): typing starts once the prompt box shows.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-/work/venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
command -v tmux >/dev/null || { echo "tmux is not installed"; exit 2; }

TMP=$(mktemp -d /tmp/landiff-first.XXXXXX)
SOCKET="landiff-first-$$"  # a private tmux server: no other session is touched
SESSION=first
PROMPT="A dog and a heron wading through a misty marsh at dawn, yes, in soft light"
export LANDIFF_DATA_DIR="$TMP/data" LANDIFF_RUNTIME_DIR="$TMP/run" LANDIFF_CACHE_DIR="$TMP/cache"
export XDG_CONFIG_HOME="$TMP/config" XDG_DATA_HOME="$TMP/xdg-data" XDG_CACHE_HOME="$TMP/xdg-cache"
export HF_HOME="$TMP/hf" HF_ENDPOINT="http://127.0.0.1:9"  # a download, were one started, fails at once
unset LANDIFF_HOME HF_HUB_OFFLINE
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

pane() { tmux -L "$SOCKET" capture-pane -p -t "$SESSION"; }
wait_for() {  # text, seconds
  local deadline=$((SECONDS + $2))
  until pane | grep -qF -- "$1"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}
cleanup() {
  tmux -L "$SOCKET" kill-server 2>/dev/null
  (cd "$TMP" && "$PYTHON" -m engine.cli stop >/dev/null 2>&1)  # the engine the TUI started outlives it
  if [ -n "${KEEP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

cd "$TMP" || exit 2  # no ./ckpts here: the weights are looked for in the (empty) data dir only
started=$SECONDS
tmux -L "$SOCKET" new-session -d -s "$SESSION" -x 120 -y 40 \
  "cd '$TMP' && TERM=xterm-256color '$PYTHON' -m landiff_tui; sleep 30"
wait_for Submit 60 || { echo "FAIL: no first frame in 60 s"; pane; exit 1; }
echo "first frame after $((SECONDS - started)) s"

typed="" banner_at=""
for ((i = 0; i < ${#PROMPT}; i++)); do
  tmux -L "$SOCKET" send-keys -t "$SESSION" -l -- "${PROMPT:i:1}"
  typed+="${PROMPT:i:1}"
  sleep 0.15
  if [ -z "$banner_at" ] && pane | grep -qF "weights are not (all) in"; then
    banner_at=${#typed}
    echo "the banner appeared after $banner_at of ${#PROMPT} characters were typed"
  fi
done
wait_for "weights are not (all) in" 90 || { echo "FAIL: no first-run banner in 90 s"; pane; exit 1; }
sleep 1
pane >"$TMP/pane.txt"
echo "---- the pane (120x40) ----"
cat "$TMP/pane.txt"
echo "---------------------------"

failed=0
check() {  # what, then a command that succeeds when it holds
  local what=$1
  shift
  if "$@"; then echo "ok    $what"; else echo "FAIL  $what"; failed=1; fi
}
check "the prompt is whole in the prompt box" grep -qF -- "$PROMPT" "$TMP/pane.txt"
check "the banner offers the download and the tiny model" grep -qF "Try the tiny model" "$TMP/pane.txt"
check "no dialog took a key (no download question)" bash -c "! grep -qiE 'download .*\\?|GB\\?' '$TMP/pane.txt'"
check "nothing written under the weights dir" \
  bash -c "[ -z \"\$(find '$LANDIFF_DATA_DIR/weights' -type f 2>/dev/null)\" ]"
check "the engine's log has no download" bash -c "! grep -qi 'download' '$LANDIFF_DATA_DIR/engine.log'"
check "the engine ran (its log exists)" test -s "$LANDIFF_DATA_DIR/engine.log"
[ $banner_at ] && echo "typing went on through the banner's arrival (at character $banner_at)"
exit $failed
