#!/usr/bin/env bash
# Installs Autobahn|Testsuite's `wstest` (Python 2.7 code, from PyPI) into a
# git-ignored cache folder, by default .cache/autobahn in the repository.
# Idempotent: does nothing when wstest already runs.
#
# Debian 12 ships no Python 2.7, so it uses the machine's pyenv 2.7
# (~/.pyenv/versions/2.7*), or PY27=/path/to/python2.7.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/.cache/autobahn}
WSTEST=$DIR/py27/bin/wstest
if "$WSTEST" --help >/dev/null 2>&1; then
  exit 0
fi

if [ -z "${PY27:-}" ]; then
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7 \
      /usr/local/bin/python2.7 /usr/bin/python2.7; do
    if [ -x "$candidate" ]; then PY27=$candidate; break; fi
  done
fi
if ! "${PY27:-false}" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
  echo "autobahn-setup.sh: no CPython 2.7 found; install one (pyenv install 2.7.18) or set PY27" >&2
  exit 1
fi

echo "autobahn-setup.sh: installing wstest into $DIR (one time, about a minute)" >&2
rm -rf "$DIR"
mkdir -p "$DIR"
# virtualenv 20.21 is the last release that still creates Python 2.7 environments.
python3 -m venv "$DIR/venv-tools"
"$DIR/venv-tools/bin/pip" install -q 'virtualenv==20.21.1'
"$DIR/venv-tools/bin/virtualenv" -q -p "$PY27" "$DIR/py27"

# The last set of versions known to install and run together on Python 2.7.
cat > "$DIR/constraints.txt" <<'PINS'
attrs==21.4.0
autobahn==0.10.9
autobahntestsuite==25.10.1
Automat==22.10.0
cffi==1.15.1
constantly==15.1.0
cryptography==3.3.2
enum34==1.1.10
hyperlink==21.0.0
idna==2.10
incremental==16.10.1
ipaddress==1.0.23
Jinja2==2.11.3
klein==17.10.0
linecache2==1.0.0
MarkupSafe==1.1.1
pyasn1==0.5.1
pyasn1-modules==0.3.0
pycparser==2.21
PyHamcrest==1.10.1
pyOpenSSL==19.1.0
service-identity==18.1.0
six==1.16.0
traceback2==1.4.0
Twisted==19.10.0
txaio==2.1.0
typing==3.10.0.0
ujson==2.0.3
unittest2==1.1.0
Werkzeug==1.0.1
wsaccel==0.6.6
zope.interface==4.6.0
setuptools==44.0.0
PINS
export PIP_CONSTRAINT=$DIR/constraints.txt PIP_NO_PYTHON_VERSION_WARNING=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PIP=$DIR/py27/bin/pip
# Twisted and autobahntestsuite build against what is already installed, so
# the order matters.
"$PIP" install -q setuptools incremental pyOpenSSL cryptography
"$PIP" install -q --no-build-isolation Twisted
"$PIP" install -q --no-build-isolation autobahntestsuite
"$WSTEST" --help >/dev/null
echo "autobahn-setup.sh: wstest ready: $WSTEST" >&2
