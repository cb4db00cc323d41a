#!/usr/bin/env bash
# System packages that only the tests need: a PostgreSQL server, which the sweep tests
# start as a temporary cluster on a free port (several machines share a sweep through
# such a database). Installed with apt-get when missing; where that cannot be done the
# PostgreSQL tests say so in their skip reason. Quick when it is already there.
set -uo pipefail

if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "test services: no apt-get to install PostgreSQL; the PostgreSQL sweep tests will be skipped"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "test services: installing PostgreSQL (apt-get install postgresql)"
{ $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null; } \
    || echo "test services: could not install PostgreSQL; the PostgreSQL sweep tests will be skipped"
exit 0
