# Sourced by the A/B scripts (scripts/gpu-decode-ab.sh, scripts/gpu-train-ab.sh):
# `unpack_variants ARGS...` sets `variants` to the arguments, each a fairyc
# executable optionally after environment settings, with an executable given
# as an .xz decompressed into .dev/ first (refused where that would
# overwrite another variant's executable).
unpack_variants() {
  variants=()
  local variant binary out
  local -a words
  for variant in "$@"; do
    read -r -a words <<< "$variant"
    binary=${words[-1]}
    if [[ $binary == *.xz ]]; then
      out=.dev/$(basename "$binary" .xz)
      # Decompressing over another variant's executable would run one
      # binary under two names.
      for other in "$@"; do
        if [[ ${other##* } == "$out" ]]; then
          echo "unpacking $binary would overwrite the variant $out: name one of them differently" >&2
          exit 2
        fi
      done
      xz -d -c "$binary" > "$out" && chmod +x "$out"
      words[-1]=$out
    fi
    variants+=("${words[*]}")
  done
}
