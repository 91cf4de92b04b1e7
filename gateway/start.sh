#!/usr/bin/env bash
# Start, reload or stop the Nginx gateway of feedbackbot.
#
#   gateway/start.sh [start|reload|stop]
#
# Settings come from the environment (defaults in brackets):
#   FEEDBACKBOT_GATEWAY_DIR        run folder for nginx.conf, pid, logs [data/gateway]
#   FEEDBACKBOT_KEYS_FILE          key store of SHA-256 hashes, managed by `feedbackbot keys` [data/api-keys.json]
#   FEEDBACKBOT_GATEWAY_LISTEN     address:port to listen on [127.0.0.1:8080]
#   FEEDBACKBOT_UPSTREAM           Ray Serve's HTTP proxy, host:port [127.0.0.1:8000]
#   FEEDBACKBOT_RATE_PER_KEY_RPS   sustained requests per second per key [20]
#   FEEDBACKBOT_RATE_BURST         requests per key allowed above that rate at once [40]
#   FEEDBACKBOT_RATE_PER_ADDRESS_RPS    sustained requests per second per client address, 0 for
#                                       no limit [0]. Behind a load balancer every request comes
#                                       from its address, so leave it at 0 there.
#   FEEDBACKBOT_RATE_PER_ADDRESS_BURST  requests per client address allowed above that rate at once [100]
#     Each of these four has a per-role variant, with _SUBMIT, _ANALYST or _ADMIN appended
#     (for example FEEDBACKBOT_RATE_PER_KEY_RPS_ANALYST), which defaults to the plain one.
#     A request counts against its key and its address in the buckets of its key's role.
#     Rates and bursts are whole numbers; the rate per key is at least 1.
#   FEEDBACKBOT_RATE_WEB_PER_ADDRESS_RPS    sustained requests per second per client address to the
#                                           pages that need no key (the feedback form at /, its
#                                           assets, sign-in), 0 for no limit [5]
#   FEEDBACKBOT_RATE_WEB_PER_ADDRESS_BURST  requests per client address allowed above that rate at once [50]
#   FEEDBACKBOT_SUBMIT_MAX_IN_FLIGHT  POST /v1/feedback requests that the gateway passes on at
#                                     once; more get an immediate 503 with Retry-After, 0 for no
#                                     limit [128]. It bounds the time a submission spends queued.
#   FEEDBACKBOT_BATCH_MAX_IN_FLIGHT   the same for POST /v1/feedback:batch [4]
#   FEEDBACKBOT_CORS_ORIGIN        the web form's origin, e.g. https://forms.example.com, that may
#                                  POST /v1/feedback from a browser; other origins get no CORS headers [none]
#   FEEDBACKBOT_NJS_MODULE         Nginx's njs module, which hashes X-API-Key
#                                  [/usr/lib/nginx/modules/ngx_http_js_module.so]
#   FEEDBACKBOT_PYTHON             Python that renders the key map [.venv/bin/python, else python3]
#   FEEDBACKBOT_MAX_BODY_BYTES     largest request body in bytes [65536]
#   FEEDBACKBOT_MAX_BATCH_BODY_BYTES  largest body of POST /v1/feedback:batch in bytes [4194304]
#   FEEDBACKBOT_RETRY_AFTER_S      Retry-After of 429 and 503 responses, in seconds [1]
# `start` prints the master process id; `stop` ends that process and waits for it. `reload`
# renders the configuration and key map again and applies them without dropping requests.
# `feedbackbot keys create|revoke|rotate` renders only the key map and reloads the gateway.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
action=${1:-start}
run_dir=${FEEDBACKBOT_GATEWAY_DIR:-data/gateway}
keys_file=${FEEDBACKBOT_KEYS_FILE:-data/api-keys.json}
listen=${FEEDBACKBOT_GATEWAY_LISTEN:-127.0.0.1:8080}
upstream=${FEEDBACKBOT_UPSTREAM:-127.0.0.1:8000}
rate=${FEEDBACKBOT_RATE_PER_KEY_RPS:-20}
burst=${FEEDBACKBOT_RATE_BURST:-40}
max_body=${FEEDBACKBOT_MAX_BODY_BYTES:-65536}
max_batch_body=${FEEDBACKBOT_MAX_BATCH_BODY_BYTES:-4194304}
retry_after=${FEEDBACKBOT_RETRY_AFTER_S:-1}
address_rate=${FEEDBACKBOT_RATE_PER_ADDRESS_RPS:-0}
address_burst=${FEEDBACKBOT_RATE_PER_ADDRESS_BURST:-100}
cors_origin=${FEEDBACKBOT_CORS_ORIGIN:-}
web_rate=${FEEDBACKBOT_RATE_WEB_PER_ADDRESS_RPS:-5}
web_burst=${FEEDBACKBOT_RATE_WEB_PER_ADDRESS_BURST:-50}
submit_in_flight=${FEEDBACKBOT_SUBMIT_MAX_IN_FLIGHT:-128}
batch_in_flight=${FEEDBACKBOT_BATCH_MAX_IN_FLIGHT:-4}
njs_module=${FEEDBACKBOT_NJS_MODULE:-/usr/lib/nginx/modules/ngx_http_js_module.so}
nginx_bin=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
if [[ -n ${FEEDBACKBOT_PYTHON:-} ]]; then
    python_bin=$FEEDBACKBOT_PYTHON
elif [[ -x $here/../.venv/bin/python ]]; then
    python_bin=$here/../.venv/bin/python
else
    python_bin=python3
fi

fail() {
    echo "gateway: $*" >&2
    exit 1
}

require_integer() {
    [[ $2 =~ ^[0-9]+$ ]] || fail "invalid $1=$2: expected a whole number"
}

require_rate() {
    [[ $2 =~ ^[0-9]+$ && $2 -ge 1 ]] || fail "invalid $1=$2: expected a whole number of requests per second, at least 1"
}

render_keys() {
    # feedbackbot.keys renders the map from each active key's SHA-256 to "ROLE KEY_ID", the
    # same code that `feedbackbot keys` runs, so both write the same file. That module needs
    # only the standard library, so the system's python3 works when there is no .venv.
    PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" "$python_bin" -m feedbackbot.keys render \
        --keys-file "$keys_file" --gateway-dir "$run_dir" \
        || fail "cannot render the key map from $keys_file; see the message above"
}

role_setting() {
    # Print the value of $1_<ROLE> for role $2, else the default $3.
    local name
    name="$1_${2^^}"
    echo "${!name:-$3}"
}

render_rate_limits() {
    # Zones and limit_req lines per role, included by nginx.conf and by every API location.
    # A zone counts only requests of its own role, because its key is empty for the other
    # roles. A role whose rate per address is 0 gets no zone for addresses.
    local role key_rate key_burst role_address_rate role_address_burst
    : > "$run_dir/limit-req.conf.new"
    : > "$run_dir/limit-req-zones.conf.new"
    for role in submit analyst admin; do
        key_rate=$(role_setting FEEDBACKBOT_RATE_PER_KEY_RPS "$role" "$rate")
        key_burst=$(role_setting FEEDBACKBOT_RATE_BURST "$role" "$burst")
        role_address_rate=$(role_setting FEEDBACKBOT_RATE_PER_ADDRESS_RPS "$role" "$address_rate")
        role_address_burst=$(role_setting FEEDBACKBOT_RATE_PER_ADDRESS_BURST "$role" "$address_burst")
        require_rate "FEEDBACKBOT_RATE_PER_KEY_RPS_${role^^}" "$key_rate"
        require_integer "FEEDBACKBOT_RATE_BURST_${role^^}" "$key_burst"
        require_integer "FEEDBACKBOT_RATE_PER_ADDRESS_RPS_${role^^}" "$role_address_rate"
        require_integer "FEEDBACKBOT_RATE_PER_ADDRESS_BURST_${role^^}" "$role_address_burst"
        printf 'limit_req_zone $limit_key_%s zone=key_%s:10m rate=%sr/s;\n' \
            "$role" "$role" "$key_rate" >> "$run_dir/limit-req-zones.conf.new"
        printf 'limit_req zone=key_%s burst=%s nodelay;\n' "$role" "$key_burst" >> "$run_dir/limit-req.conf.new"
        if (( 10#$role_address_rate > 0 )); then
            printf 'limit_req_zone $limit_address_%s zone=address_%s:10m rate=%sr/s;\n' \
                "$role" "$role" "$role_address_rate" >> "$run_dir/limit-req-zones.conf.new"
            printf 'limit_req zone=address_%s burst=%s nodelay;\n' \
                "$role" "$role_address_burst" >> "$run_dir/limit-req.conf.new"
        fi
    done
    # The pages without a key (form, assets, sign-in) count per client address only.
    : > "$run_dir/limit-req-web.conf.new"
    if (( 10#$web_rate > 0 )); then
        printf 'limit_req_zone $binary_remote_addr zone=web_address:10m rate=%sr/s;\n' \
            "$web_rate" >> "$run_dir/limit-req-zones.conf.new"
        printf 'limit_req zone=web_address burst=%s nodelay;\n' "$web_burst" >> "$run_dir/limit-req-web.conf.new"
    fi
    # Requests in flight per submit route, counted over all workers and clients. A limit of 0
    # leaves the route without a limit.
    require_integer FEEDBACKBOT_SUBMIT_MAX_IN_FLIGHT "$submit_in_flight"
    require_integer FEEDBACKBOT_BATCH_MAX_IN_FLIGHT "$batch_in_flight"
    printf 'limit_conn_zone $in_flight_key zone=in_flight_submit:1m;\n' >> "$run_dir/limit-req-zones.conf.new"
    printf 'limit_conn_zone $in_flight_key zone=in_flight_batch:1m;\n' >> "$run_dir/limit-req-zones.conf.new"
    : > "$run_dir/limit-in-flight-submit.conf.new"
    : > "$run_dir/limit-in-flight-batch.conf.new"
    if (( 10#$submit_in_flight > 0 )); then
        printf 'limit_conn in_flight_submit %s;\n' "$((10#$submit_in_flight))" > "$run_dir/limit-in-flight-submit.conf.new"
    fi
    if (( 10#$batch_in_flight > 0 )); then
        printf 'limit_conn in_flight_batch %s;\n' "$((10#$batch_in_flight))" > "$run_dir/limit-in-flight-batch.conf.new"
    fi
    mv "$run_dir/limit-in-flight-submit.conf.new" "$run_dir/limit-in-flight-submit.conf"
    mv "$run_dir/limit-in-flight-batch.conf.new" "$run_dir/limit-in-flight-batch.conf"
    mv "$run_dir/limit-req-zones.conf.new" "$run_dir/limit-req-zones.conf"
    mv "$run_dir/limit-req-web.conf.new" "$run_dir/limit-req-web.conf"
    mv "$run_dir/limit-req.conf.new" "$run_dir/limit-req.conf"
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
    local cors_entry=""
    if [[ -n $cors_origin ]]; then
        cors_entry="\"$cors_origin\" \$http_origin;"
    fi
    sed -e "s|@RUN_DIR@|$run_dir|g" \
        -e "s|@GATEWAY_SRC_DIR@|$here|g" \
        -e "s|@NJS_MODULE@|$njs_module|g" \
        -e "s|@CORS_ORIGIN_ENTRY@|$cors_entry|g" \
        -e "s|@USER_LINE@|$user_line|g" \
        -e "s|@LISTEN@|$listen|g" \
        -e "s|@UPSTREAM@|$upstream|g" \
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
    [[ -f $njs_module ]] || fail "the njs module $njs_module, which hashes API keys, is missing; install it with 'apt-get install libnginx-mod-http-js' or set FEEDBACKBOT_NJS_MODULE"
    [[ $listen =~ ^[0-9.]+:[0-9]+$ ]] || fail "invalid FEEDBACKBOT_GATEWAY_LISTEN=$listen: expected address:port"
    [[ $upstream =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || fail "invalid FEEDBACKBOT_UPSTREAM=$upstream: expected host:port"
    require_rate FEEDBACKBOT_RATE_PER_KEY_RPS "$rate"
    require_integer FEEDBACKBOT_RATE_BURST "$burst"
    require_integer FEEDBACKBOT_RATE_PER_ADDRESS_RPS "$address_rate"
    require_integer FEEDBACKBOT_RATE_PER_ADDRESS_BURST "$address_burst"
    require_integer FEEDBACKBOT_RATE_WEB_PER_ADDRESS_RPS "$web_rate"
    require_integer FEEDBACKBOT_RATE_WEB_PER_ADDRESS_BURST "$web_burst"
    [[ -z $cors_origin || $cors_origin =~ ^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$ ]] \
        || fail "invalid FEEDBACKBOT_CORS_ORIGIN=$cors_origin: expected scheme://host[:port] without a path, e.g. https://forms.example.com"
    require_integer FEEDBACKBOT_MAX_BODY_BYTES "$max_body"
    require_integer FEEDBACKBOT_MAX_BATCH_BODY_BYTES "$max_batch_body"
    require_integer FEEDBACKBOT_RETRY_AFTER_S "$retry_after"
    mkdir -p "$run_dir"
    run_dir=$(cd "$run_dir" && pwd)
    render_keys
    render_rate_limits
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
