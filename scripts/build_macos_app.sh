#!/bin/sh
# Build mlx-sd.app, a double-clickable macOS app bundle that starts the mlx-sd desktop app.
#
#   scripts/build_macos_app.sh [PYTHON] [OUTPUT_FOLDER]
#
# PYTHON        the Python that mlx-sd is installed in (default: python3). Its full path is written
#               into the bundle, so a virtual environment works without being activated.
# OUTPUT_FOLDER where mlx-sd.app is written (default: dist). Drag the result to /Applications.
#
# The bundle holds no Python of its own: it runs `PYTHON -m app`, so reinstalling or upgrading mlx-sd in
# that Python needs no rebuild. The icon comes from the installed package (app.desktop_entry.ICON_DIR)
# and is converted to .icns with iconutil. Untested: written on Linux, where it cannot run.
set -eu

PYTHON_ARG="${1:-python3}"
OUTPUT="${2:-dist}"

if [ "$(uname -s)" != "Darwin" ]; then
    echo "build_macos_app.sh: this builds a macOS app bundle; run it on a Mac" >&2
    exit 1
fi

# The interpreter's absolute path, and facts from the installed package.
PYTHON="$("$PYTHON_ARG" -c 'import sys; print(sys.executable)')"
"$PYTHON" -c 'import app.main' || {
    echo "build_macos_app.sh: mlx-sd is not installed in $PYTHON; run: $PYTHON -m pip install mlx-sd" >&2
    exit 1
}
ICON_DIR="$("$PYTHON" -c 'from app.desktop_entry import ICON_DIR; print(ICON_DIR)')"
VERSION="$("$PYTHON" -c 'import mlx_sd; print(mlx_sd.__version__)')"
PYTHON_QUOTED="$("$PYTHON" -c 'import shlex, sys; print(shlex.quote(sys.executable))')"

APP="$OUTPUT/mlx-sd.app"
rm -rf "$APP"
mkdir -p "$APP/Contents/MacOS" "$APP/Contents/Resources"

# The icon: the rendered PNGs as an .iconset (each size and its @2x), then iconutil makes the .icns.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ICONSET="$WORK/mlx-sd.iconset"
mkdir "$ICONSET"
for SIZE in 16 32 128 256 512; do
    cp "$ICON_DIR/mlx-sd-$SIZE.png" "$ICONSET/icon_${SIZE}x${SIZE}.png"
    cp "$ICON_DIR/mlx-sd-$((SIZE * 2)).png" "$ICONSET/icon_${SIZE}x${SIZE}@2x.png"
done
iconutil --convert icns --output "$APP/Contents/Resources/mlx-sd.icns" "$ICONSET"

# The executable macOS starts: a shell script that runs the app with the chosen Python.
cat > "$APP/Contents/MacOS/mlx-sd" <<EOF
#!/bin/sh
exec $PYTHON_QUOTED -m app "\$@"
EOF
chmod 755 "$APP/Contents/MacOS/mlx-sd"

cat > "$APP/Contents/Info.plist" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>CFBundleName</key>
    <string>mlx-sd</string>
    <key>CFBundleDisplayName</key>
    <string>mlx-sd</string>
    <key>CFBundleIdentifier</key>
    <string>io.github.mlx-sd</string>
    <key>CFBundleVersion</key>
    <string>$VERSION</string>
    <key>CFBundleShortVersionString</key>
    <string>$VERSION</string>
    <key>CFBundlePackageType</key>
    <string>APPL</string>
    <key>CFBundleExecutable</key>
    <string>mlx-sd</string>
    <key>CFBundleIconFile</key>
    <string>mlx-sd</string>
    <key>LSMinimumSystemVersion</key>
    <string>13.5</string>
    <key>LSApplicationCategoryType</key>
    <string>public.app-category.graphics-design</string>
    <key>NSHighResolutionCapable</key>
    <true/>
</dict>
</plist>
EOF
plutil -lint "$APP/Contents/Info.plist" >/dev/null

echo "built $APP (starts $PYTHON -m app)"
