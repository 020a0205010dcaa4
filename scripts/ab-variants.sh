# Sourced by the A/B scripts (scripts/gpu-decode-ab.sh, scripts/gpu-train-ab.sh):
# `unpack_variants ARGS...` sets `variants` to the arguments, each a fairyc
# executable optionally after environment settings, with an executable given
# as an .xz decompressed into .dev/ first.
unpack_variants() {
  variants=()
  local variant binary out
  local -a words
  for variant in "$@"; do
    read -r -a words <<< "$variant"
    binary=${words[-1]}
    if [[ $binary == *.xz ]]; then
      out=.dev/$(basename "$binary" .xz)
      xz -d -c "$binary" > "$out" && chmod +x "$out"
      words[-1]=$out
    fi
    variants+=("${words[*]}")
  done
}
