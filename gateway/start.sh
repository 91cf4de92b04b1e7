#!/usr/bin/env bash
# Start, reload or stop the Nginx gateway of feedbackbot.
#
#   gateway/start.sh [start|reload|stop]
#
# Settings come from the environment (defaults in brackets):
#   FEEDBACKBOT_GATEWAY_DIR        run folder for nginx.conf, pid, logs [data/gateway]
#   FEEDBACKBOT_KEYS_FILE          API keys, one "ROLE KEY" per line [data/api-keys.txt]
#   FEEDBACKBOT_GATEWAY_LISTEN     address:port to listen on [127.0.0.1:8080]
#   FEEDBACKBOT_UPSTREAM           Ray Serve's HTTP proxy, host:port [127.0.0.1:8000]
#   FEEDBACKBOT_RATE_PER_KEY_RPS   sustained requests per second per key [20]
#   FEEDBACKBOT_RATE_BURST         requests per key allowed above that rate at once [40]
#   FEEDBACKBOT_MAX_BODY_BYTES     largest request body in bytes [65536]
#   FEEDBACKBOT_MAX_BATCH_BODY_BYTES  largest body of POST /v1/feedback:batch in bytes [4194304]
#   FEEDBACKBOT_RETRY_AFTER_S      Retry-After of 429 and 503 responses, in seconds [1]
# `start` prints the master process id; `stop` ends that process and waits for it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
action=${1:-start}
run_dir=${FEEDBACKBOT_GATEWAY_DIR:-data/gateway}
keys_file=${FEEDBACKBOT_KEYS_FILE:-data/api-keys.txt}
listen=${FEEDBACKBOT_GATEWAY_LISTEN:-127.0.0.1:8080}
upstream=${FEEDBACKBOT_UPSTREAM:-127.0.0.1:8000}
rate=${FEEDBACKBOT_RATE_PER_KEY_RPS:-20}
burst=${FEEDBACKBOT_RATE_BURST:-40}
max_body=${FEEDBACKBOT_MAX_BODY_BYTES:-65536}
max_batch_body=${FEEDBACKBOT_MAX_BATCH_BODY_BYTES:-4194304}
retry_after=${FEEDBACKBOT_RETRY_AFTER_S:-1}
nginx_bin=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

fail() {
    echo "gateway: $*" >&2
    exit 1
}

require_integer() {
    [[ $2 =~ ^[0-9]+$ ]] || fail "invalid $1=$2: expected a whole number"
}

render_keys() {
    # Turn "ROLE KEY" lines into two nginx map includes: key -> role and key -> key id.
    # The key id is the first 12 hex digits of the key's SHA-256; the graph uses it to keep
    # each client's Idempotency-Keys apart. Keys must be plain tokens so that no key can
    # break out of the map syntax.
    local line_number=0 role key rest key_id
    : > "$run_dir/api-keys.map.new"
    : > "$run_dir/api-key-ids.map.new"
    while IFS= read -r line || [[ -n $line ]]; do
        line_number=$((line_number + 1))
        [[ -z ${line// } || $line =~ ^[[:space:]]*# ]] && continue
        read -r role key rest <<< "$line"
        [[ $role == submit || $role == admin ]] \
            || fail "$keys_file line $line_number: invalid role '$role'; use submit or admin"
        [[ $key =~ ^[A-Za-z0-9_-]{16,128}$ ]] \
            || fail "$keys_file line $line_number: invalid key; use 16 to 128 letters, digits, - or _"
        [[ -z $rest ]] || fail "$keys_file line $line_number: expected 'ROLE KEY' and nothing more"
        printf '"%s" %s;\n' "$key" "$role" >> "$run_dir/api-keys.map.new"
        key_id=$(printf '%s' "$key" | sha256sum)
        printf '"%s" k-%s;\n' "$key" "${key_id:0:12}" >> "$run_dir/api-key-ids.map.new"
    done < "$keys_file"
    mv "$run_dir/api-key-ids.map.new" "$run_dir/api-key-ids.map"
    mv "$run_dir/api-keys.map.new" "$run_dir/api-keys.map"
}

render_config() {
    local user_line=""
    if [[ $(id -u) == 0 ]]; then
        # Workers drop root; they only need the temp folders.
        user_line="user nobody nogroup;"
    fi
    mkdir -p "$run_dir/tmp"/{body,proxy,fastcgi,uwsgi,scgi}
    if [[ -n $user_line ]]; then
        chown -R nobody:nogroup "$run_dir/tmp"
        # Bodies over 64 KiB (batches) are buffered there. If the user `nobody` cannot reach
        # that folder, every large request would fail later.
        runuser -u nobody -- test -w "$run_dir/tmp/body" \
            || fail "nginx workers run as nobody and cannot write $run_dir/tmp/body; make each parent folder of $run_dir reachable (chmod o+x) or set FEEDBACKBOT_GATEWAY_DIR to another folder"
    fi
    sed -e "s|@RUN_DIR@|$run_dir|g" \
        -e "s|@USER_LINE@|$user_line|g" \
        -e "s|@LISTEN@|$listen|g" \
        -e "s|@UPSTREAM@|$upstream|g" \
        -e "s|@RATE_PER_KEY_RPS@|$rate|g" \
        -e "s|@RATE_BURST@|$burst|g" \
        -e "s|@MAX_BODY_BYTES@|$max_body|g" \
        -e "s|@MAX_BATCH_BODY_BYTES@|$max_batch_body|g" \
        -e "s|@RETRY_AFTER_S@|$retry_after|g" \
        "$here/nginx.conf.template" > "$run_dir/nginx.conf"
}

running_pid() {
    local pid
    [[ -f $run_dir/nginx.pid ]] || return 1
    pid=$(cat "$run_dir/nginx.pid")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

prepare() {
    [[ -x $nginx_bin ]] || fail "nginx not found; install it with 'apt-get install nginx'"
    [[ -f $keys_file ]] || fail "keys file $keys_file not found; create it with lines 'ROLE KEY'"
    [[ $listen =~ ^[0-9.]+:[0-9]+$ ]] || fail "invalid FEEDBACKBOT_GATEWAY_LISTEN=$listen: expected address:port"
    [[ $upstream =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || fail "invalid FEEDBACKBOT_UPSTREAM=$upstream: expected host:port"
    require_integer FEEDBACKBOT_RATE_PER_KEY_RPS "$rate"
    require_integer FEEDBACKBOT_RATE_BURST "$burst"
    require_integer FEEDBACKBOT_MAX_BODY_BYTES "$max_body"
    require_integer FEEDBACKBOT_MAX_BATCH_BODY_BYTES "$max_batch_body"
    require_integer FEEDBACKBOT_RETRY_AFTER_S "$retry_after"
    mkdir -p "$run_dir"
    run_dir=$(cd "$run_dir" && pwd)
    render_keys
    render_config
    "$nginx_bin" -t -q -p "$run_dir" -c "$run_dir/nginx.conf" \
        || fail "the rendered $run_dir/nginx.conf is invalid; see the message above"
}

case $action in
    start)
        if pid=$(running_pid); then
            echo "$pid"
            exit 0
        fi
        prepare
        "$nginx_bin" -p "$run_dir" -c "$run_dir/nginx.conf"
        for _ in $(seq 1 50); do
            if pid=$(running_pid); then
                echo "$pid"
                exit 0
            fi
            sleep 0.1
        done
        fail "nginx did not write $run_dir/nginx.pid within 5 s; see $run_dir/error.log"
        ;;
    reload)
        pid=$(running_pid) || fail "the gateway is not running (no live pid in $run_dir/nginx.pid)"
        prepare
        kill -HUP "$pid"
        echo "$pid"
        ;;
    stop)
        pid=$(running_pid) || exit 0
        # QUIT lets workers finish the requests they are serving.
        kill -QUIT "$pid"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || exit 0
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        ;;
    *)
        fail "unknown action '$action'; use start, reload or stop"
        ;;
esac
