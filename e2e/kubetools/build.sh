#!/bin/sh
# build.sh builds kube-apiserver and kube-proxy from the Go module
# k8s.io/kubernetes (the version this module requires) into a cache that
# persists across runs:
#
#   ${SVCPROXY_KUBE_CACHE:-/var/cache/svcproxy-kube}/bin/<version>/kube-apiserver
#   ${SVCPROXY_KUBE_CACHE:-/var/cache/svcproxy-kube}/bin/<version>/kube-proxy
#
# A binary already in the cache is not rebuilt. Builds run under nice, one at a
# time (flock), and are moved into place only when complete, so a cancelled
# build never leaves a truncated binary behind. Arguments name the binaries to
# build (default: both). The last line of output is the cache directory.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${SVCPROXY_KUBE_CACHE:-/var/cache/svcproxy-kube}
version=$(awk '($1 == "k8s.io/kubernetes" && $2 ~ /^v/) { print $2 } ($1 == "require" && $2 == "k8s.io/kubernetes") { print $3 }' "$here/go.mod" | head -n1)
if [ -z "$version" ]; then
	echo "build.sh: cannot find the k8s.io/kubernetes version in $here/go.mod" >&2
	exit 1
fi
bindir="$cache/bin/$version"
mkdir -p "$bindir"

targets=${*:-kube-apiserver kube-proxy}

# Version stamp, as kubernetes' own build sets it (hack/lib/version.sh).
minor=$(echo "$version" | cut -d. -f2)
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

exec 9>"$bindir/.lock"
flock 9

cd "$here"
for t in $targets; do
	if [ -x "$bindir/$t" ]; then
		echo "build.sh: $bindir/$t is cached"
		continue
	fi
	start=$(date +%s)
	echo "build.sh: building $t $version (this takes minutes on a cold cache)"
	CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$bindir/.$t.tmp" "k8s.io/kubernetes/cmd/$t"
	mv "$bindir/.$t.tmp" "$bindir/$t"
	echo "build.sh: built $bindir/$t in $(( $(date +%s) - start ))s"
done
echo "$bindir"
