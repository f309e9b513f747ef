#!/usr/bin/env bash
# Make sure the real servers the tests use are answering: Redis on 6379, PostgreSQL on 5432,
# and Debian's Chromium + ChromeDriver for the browser tests. Idempotent; never downloads a browser.
set -u
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
  [ $apt_updated = 1 ] || { as_root apt-get update -qq >/dev/null; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/redis-ci.log
  for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 ping >/dev/null || { echo "Redis is not answering on 127.0.0.1:6379" >&2; exit 1; }

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if ! ls /etc/postgresql >/dev/null 2>&1; then apt_install postgresql; fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start 2>/dev/null || true
  for _ in $(seq 50); do pg_isready -h 127.0.0.1 -q && break; sleep 0.2; done
fi
pg_isready -h 127.0.0.1 -p 5432 -q || echo "warning: PostgreSQL is not answering on 127.0.0.1:5432" >&2

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install chromium chromium-driver || echo "warning: could not install chromium; browser tests will fail" >&2
fi
# promtool (tests/test_monitoring.py validates the Prometheus config and the metrics with it): the
# binary out of Debian's prometheus package, unpacked without installing it (no daemon is started).
PROMTOOL_DIR=/var/cache/emotion-tools/prometheus
if ! command -v promtool >/dev/null && [ ! -x "$PROMTOOL_DIR/usr/bin/promtool" ]; then
  [ $apt_updated = 1 ] || { as_root apt-get update -qq >/dev/null; apt_updated=1; }
  download=$(mktemp -d)
  if (cd "$download" && as_root apt-get download -qq prometheus >/dev/null 2>&1); then
    as_root mkdir -p "$PROMTOOL_DIR" && as_root dpkg -x "$download"/prometheus_*.deb "$PROMTOOL_DIR"
  else
    echo "warning: could not fetch Debian's prometheus package; the monitoring tests will fail" >&2
  fi
  rm -rf "$download"
fi
exit 0
