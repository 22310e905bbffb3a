#!/usr/bin/env bash
# Rebuilds gateway/web/assets/vendor/pkijs.bundle.js: the setup wizard's ASN.1, CSR and PKCS#12 library (pkijs with
# asn1js), installed from npm at the versions pinned in scripts/web-vendor/package-lock.json and bundled by esbuild
# into one minified ES module, with every bundled package's licence and the exact versions beside it.
#
# The built files are committed: the gateway, the image and CI need no npm. Run this only to change a version
# (edit scripts/web-vendor/package.json, then `npm install --package-lock-only` there) and commit what it writes.
# Needs node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir=scripts/web-vendor
out=gateway/web/assets/vendor

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$source_dir/package.json" "$source_dir/package-lock.json" "$source_dir/entry.js" "$work/"
(cd "$work" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)

mkdir -p "$out"
"$work/node_modules/.bin/esbuild" "$work/entry.js" --bundle --format=esm --target=es2020 --minify \
  --legal-comments=none --log-level=warning --outfile="$out/pkijs.bundle.js"

# The licences of every package in the bundle, and the exact versions, for the record.
node - "$work" "$out" <<'EOF'
const fs = require("fs");
const path = require("path");
const [work, out] = process.argv.slice(2);
const lock = JSON.parse(fs.readFileSync(path.join(work, "package-lock.json"), "utf8"));
const bundled = Object.entries(lock.packages)
  .filter(([where, meta]) => where && !meta.dev && !where.includes("esbuild"))
  .map(([where, meta]) => ({ where, name: where.replace(/^.*node_modules\//, ""), version: meta.version }))
  .sort((a, b) => a.name.localeCompare(b.name));
const licences = [];
const versions = ["pkijs.bundle.js: built by scripts/build_web_vendor.sh with esbuild " +
  lock.packages["node_modules/esbuild"].version + " from these npm packages:", ""];
for (const { where, name, version } of bundled) {
  const dir = path.join(work, where);
  const meta = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
  versions.push(`${name} ${version} (${meta.license})`);
  const file = fs.readdirSync(dir).find((f) => /^licen[cs]e/i.test(f));
  const text = file ? fs.readFileSync(path.join(dir, file), "utf8").trim() : `License: ${meta.license}`;
  licences.push(`${name} ${version}\n${"-".repeat(40)}\n${text}\n`);
}
fs.writeFileSync(path.join(out, "VERSIONS.txt"), versions.join("\n") + "\n");
fs.writeFileSync(path.join(out, "LICENSES.txt"), licences.join("\n"));
EOF
echo "wrote $out/pkijs.bundle.js ($(wc -c <"$out/pkijs.bundle.js") bytes), $out/LICENSES.txt, $out/VERSIONS.txt"
