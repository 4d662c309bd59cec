#!/bin/sh
# The comparison report on real recordings: drum samples (hydrogen-drumkits, lossless
# recordings) and game music (hyperrogue-music, Vorbis) shipped in Debian packages, cut to
# 4 s at 44.1 kHz mono; degraded to 11.025 kHz; restored by sbr and by a tiny AEROMamba trained
# here (recipes/tiny/aeromamba.toml on the same clean files: a demonstration of the page,
# not a fair model); scored against the originals with the unprocessed input as a third
# column; rendered by headless Chromium.
#
#   benchmarks/report_demo.sh WORKDIR [TRAIN_STEPS]
#
# Needs: sox, the packages hydrogen-drumkits and hyperrogue-music, chromium.
set -eu
work=$(realpath -m "${1:?usage: $0 WORKDIR [TRAIN_STEPS]}")
steps=${2:-100}
here=$(dirname "$0")/..
upsr() { PYTHONPATH="$here/src" nice -n 10 python -m upsr "$@"; }
mkdir -p "$work/ref/drums" "$work/ref/music" "$work/report"
kits=/usr/share/hydrogen/data/drumkits
cut() { sox "$1" -r 44100 -c 1 -b 24 "$2" trim "${3:-0}" 4 2>/dev/null; }
cut "$kits/ForzeeStereo/HiHatOpen-0.wav" "$work/ref/drums/hihat_open.wav"
cut "$kits/ForzeeStereo/CrashRide18Bell-1.wav" "$work/ref/drums/crash_ride.wav"
cut "$kits/ColomboAcousticDrumkit/crash20i__ride4.flac" "$work/ref/drums/crash20.wav"
cut "$kits/rumpf_kit_z01_h2/beats_06-21.flac" "$work/ref/drums/beat.wav"
cut /usr/share/hyperrogue/music/hr3-caves.ogg "$work/ref/music/caves.wav" 20
cut /usr/share/hyperrogue/music/hr3-jungle.ogg "$work/ref/music/jungle.wav" 30
cut /usr/share/hyperrogue/music/hr-savino-ocean.ogg "$work/ref/music/ocean.wav" 20
upsr degrade "$work/ref" "$work/pairs" --resample 11025 -q
if [ ! -f "$work/run/checkpoints/best.safetensors" ]; then
    OMP_NUM_THREADS=1 upsr train "$here/recipes/tiny/aeromamba.toml" \
        --set "data.train=\"$work/ref\"" --set train.steps="$steps" --set valid.every=50 \
        --set data.segment_s=0.25 --set valid.segment_s=2.0 --out "$work/run" -q
fi
upsr enhance "$work/pairs/lr" -o "$work/sbr" --model sbr --sr 44100 --format wav -q --overwrite
upsr enhance "$work/pairs/lr" -o "$work/tiny" --model "$work/run/checkpoints/best.safetensors" \
    --format wav -q --overwrite --report "$work/report/enhance.html"
upsr eval "$work/pairs/hr" "$work/pairs/lr" "$work/sbr" "$work/tiny" \
    --name input --name sbr=sbr --name "tiny-aeromamba=$work/run/checkpoints/best.safetensors" \
    --lr-dir "$work/pairs/lr" --html "$work/report/report.html" --json "$work/report/report.json" \
    --per-file
sh "$here/scripts/report_screenshot.sh" "$work/report/report.html" "$work/report/report.png"
