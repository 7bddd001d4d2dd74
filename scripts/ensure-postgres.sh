#!/usr/bin/env bash
# Make sure the PostgreSQL the tests use is up and has the `test` database.
# Start the local cluster when it is down; create the database when it is missing.
# Does nothing when BRANCHPOINT_TEST_PG points somewhere else that answers.
set -u
url=${BRANCHPOINT_TEST_PG:-postgresql://postgres@127.0.0.1:5432/test}
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
    [ -n "$ver" ] && pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi
if command -v psql >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
  db=${url##*/}
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='$db'" | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -d postgres -c "create database \"$db\"" >/dev/null
  fi
fi
exit 0
