# Shared settings of the project's scripts (sourced, not run).
# The build directory lives outside the checkout so that every clone on this
# machine (CI's included) reuses one release build: a cold one takes ~35 min.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fruits/target}"
export FRUITS_MODEL_DIR="${FRUITS_MODEL_DIR:-$HOME/.cache/fruits/models/efficientnet-lite0}"
FRUITS_BIN="$CARGO_TARGET_DIR/release/fruits"

# Installs what the build and `fruits model install` need, if missing.
ensure_prerequisites() {
  if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then rerun" >&2
    exit 1
  fi
  if ! command -v cc >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq build-essential python3-pip >/dev/null
    else
      echo "need a C compiler and Python 3 with pip (Debian: apt-get install build-essential python3-pip)" >&2
      exit 1
    fi
  fi
}

# The unused-dependency check (scripts/test), installed once per machine.
ensure_machete() {
  command -v cargo-machete >/dev/null || cargo install --locked --quiet cargo-machete@0.9.2
}

# Licences, banned crates and sources (deny.toml); no network needed.
ensure_deny() {
  command -v cargo-deny >/dev/null || cargo install --locked --quiet cargo-deny@0.20.2
}

build_release() {
  cargo build --release --locked -p fruits
}

# The int8 model is calibrated on a seeded sample of these training folders
# (studio shots and real photos); without them only the fp32 model exists
# and jobs need --precision fp32.
FRUITS_CALIBRATION="${FRUITS_CALIBRATION:-../shared/fruits-360/Training:../shared/real-photos/grocery-store/train}"
install_model() {
  local args=() dir folders
  IFS=: read -ra folders <<<"$FRUITS_CALIBRATION"
  for dir in "${folders[@]}"; do
    if [ -d "$dir" ]; then args+=(--calibration "$dir"); fi
  done
  "$FRUITS_BIN" model install "${args[@]}"
}

# Photos without fruit for the "not a fruit" tests (scripts/non-fruit-photos).
export FRUITS_NON_FRUIT_DIR="${FRUITS_NON_FRUIT_DIR:-$HOME/.cache/fruits/non-fruit}"
install_non_fruit_photos() {
  "$(dirname "${BASH_SOURCE[0]}")/non-fruit-photos" "$FRUITS_NON_FRUIT_DIR"
}

# Photographs the kind head's training scenes are composed on (scripts/backgrounds).
export FRUITS_BACKGROUNDS="${FRUITS_BACKGROUNDS:-$HOME/.cache/fruits/backgrounds}"
install_backgrounds() {
  "$(dirname "${BASH_SOURCE[0]}")/backgrounds" "$FRUITS_BACKGROUNDS"
}

# Installs what the web page and az:// tests need: Debian's Chromium, Node.js,
# playwright-core and Azurite (pinned in crates/cli/tests/{browser,azurite}/package-lock.json).
ensure_browser() {
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v npm >/dev/null || missing+=(nodejs npm)
  if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "need ${missing[*]} for the web page test (Debian: apt-get install ${missing[*]})" >&2
      exit 1
    fi
  fi
  npm ci --prefix crates/cli/tests/browser --no-audit --no-fund --silent
  # Azurite: Microsoft's Azure Storage emulator, for crates/cli/tests/azure.rs.
  [ -x crates/cli/tests/azurite/node_modules/.bin/azurite-blob ] ||
    npm ci --prefix crates/cli/tests/azurite --no-audit --no-fund --silent
}
