# Sourced by the sanitizer scripts (asan_test.sh, sanitize_cuda_sim.sh): copy the tracked and
# untracked-but-not-ignored files of this checkout into a fresh temporary directory $WORK (removed
# on exit) and cd into it, so an instrumented build never replaces the modules in the checkout,
# which every other process keeps loading. Usage: . scripts/lib/private_copy.sh PREFIX
# (run from the repository root, with the .venv of scripts/setup_env.sh; sets ROOT and WORK).
ROOT=$(pwd)
# shellcheck disable=SC1091
. .venv/bin/activate
WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
git ls-files -z --cached --others --exclude-standard | grep -zv '^\.venv/' | \
  (cd "$ROOT" && xargs -0 cp --parents -t "$WORK")
