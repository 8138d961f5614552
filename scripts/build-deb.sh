#!/usr/bin/env bash
# Build the Debian package of the gateway (`make deb`): dist/firezone-gateway-py_<version>_<arch>.deb.
#
# The daemon and its dependencies go into a virtual environment at /usr/lib/firezone-gateway made with
# the system's python3 (the package depends on that minor version: the environment's site-packages and
# binary wheels are tied to it). Nothing is fetched when the package is installed; building it installs
# the production wheel and its dependencies with pip (from pip's cache or PyPI). The unit, the sysusers
# and tmpfiles snippets and the init script are those of packaging/ and scripts/, at the reference's
# places (rust/gateway/Cargo.toml [package.metadata.deb], rust/gateway/debian/).
#
# Usage: scripts/build-deb.sh [OUTDIR]   (env: PYTHON=/usr/bin/python3, BUILD_PY=.venv/bin/python)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=$(realpath -m "${1:-$repo/dist}")
python=${PYTHON:-/usr/bin/python3}
build_py=${BUILD_PY:-$repo/.venv/bin/python}
prefix=/usr/lib/firezone-gateway
pkg=firezone-gateway-py
maintainer=${DEB_MAINTAINER:-"Firezone Gateway (Python) maintainers <gateway-py@example.org>"}

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml" | head -n 1)
arch=$(dpkg --print-architecture)
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
pynext=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage="$work/root"
mkdir -p "$stage" "$out"

# 1. The environment: the production wheel (built offline from the sources) and its dependencies.
"$python" -m venv --without-pip "$stage$prefix"
"$build_py" -m pip wheel -q --no-deps --no-build-isolation -w "$work/wheels" "$repo"
"$build_py" -m pip --python "$stage$prefix/bin/python" install -q --no-compile \
    --disable-pip-version-check --no-warn-script-location "$work"/wheels/*.whl
# Paths inside the environment name the staging directory: point them at the installed place.
grep -rlI --null "$stage" "$stage$prefix" | xargs -0 -r sed -i "s|$stage||g"
# Byte code is made by postinst and removed by prerm (Debian policy: no shipped __pycache__). Only the
# daemon's command stays in bin/ (the dependencies' console scripts and the activation scripts go).
find "$stage$prefix" -name '__pycache__' -prune -exec rm -rf {} +
find "$stage$prefix" -name 'direct_url.json' -delete
find "$stage$prefix/bin" -mindepth 1 -maxdepth 1 ! -name 'python*' ! -name firezone-gateway -delete
rm -rf "$stage$prefix/include"
find "$stage$prefix" -name '*.so' -exec strip --strip-unneeded {} +

# 2. Commands, unit, snippets, template, documents (the reference's places).
install -d "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/usr/lib/sysusers.d" \
    "$stage/usr/lib/tmpfiles.d" "$stage/usr/share/firezone-gateway" "$stage/usr/share/doc/$pkg"
ln -s "../lib/firezone-gateway/bin/firezone-gateway" "$stage/usr/bin/firezone-gateway"
install -m 0755 "$repo/scripts/setup-masquerade.sh" "$stage/usr/bin/firezone-gateway-init"
install -m 0644 "$repo/packaging/firezone-gateway.service" "$stage/lib/systemd/system/firezone-gateway.service"
install -m 0644 "$repo/packaging/firezone-gateway.sysusers" "$stage/usr/lib/sysusers.d/firezone-gateway.conf"
install -m 0644 "$repo/packaging/firezone-gateway.tmpfiles" "$stage/usr/lib/tmpfiles.d/firezone-gateway.conf"
install -m 0644 "$repo/packaging/gateway-env.example" "$stage/usr/share/firezone-gateway/gateway-env.example"
install -m 0644 "$repo/packaging/debian/copyright" "$stage/usr/share/doc/$pkg/copyright"
# The bundled environment holds wheels built elsewhere (grpcio links its own zlib): lintian's
# embedded-library check is about Debian's own builds, not a self-contained venv under /usr/lib.
mkdir -p "$stage/usr/share/lintian/overrides"
printf '%s: embedded-library zlib [usr/lib/firezone-gateway/*]\n' "$pkg" \
    >"$stage/usr/share/lintian/overrides/$pkg"
chmod 0644 "$stage/usr/share/lintian/overrides/$pkg"
date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
printf '%s (%s) unstable; urgency=medium\n\n  * Built from the repository (scripts/build-deb.sh).\n\n -- %s  %s\n' \
    "$pkg" "$version" "$maintainer" "$date" \
    | gzip -9n >"$stage/usr/share/doc/$pkg/changelog.gz"
chmod 0644 "$stage/usr/share/doc/$pkg/changelog.gz"

# 3. Control files.
install -d "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$repo/packaging/debian/$script" "$stage/DEBIAN/$script"
done
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@SIZE@|$size|" -e "s|@MAINTAINER@|$maintainer|" \
    -e "s|@PYTHON_DEP@|python3 (>= $pyver), python3 (<< $pynext)|" \
    "$repo/packaging/debian/control.in" >"$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

deb="$out/${pkg}_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
