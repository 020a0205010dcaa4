# Sourced by the A/B scripts (scripts/gpu-decode-ab.sh, scripts/gpu-train-ab.sh):
# `unpack_variants ARGS...` sets `variants` to the arguments, each a fairyc
# executable optionally after environment settings, with an executable given
# as an .xz decompressed into .dev/ first. Variants may share one executable
# (`a.xz "SETTING=1 .dev/a"`), but an .xz is refused where it would replace
# a different executable that another variant runs: one binary would then
# run under two names.
unpack_variants() {
  variants=()
  local variant binary out i j
  local -a words targets=()
  # The file each variant runs.
  for variant in "$@"; do
    read -r -a words <<< "$variant"
    binary=${words[-1]}
    [[ $binary == *.xz ]] && binary=.dev/$(basename "$binary" .xz)
    targets+=("$(realpath -m "$binary")")
  done
  i=0
  for variant in "$@"; do
    read -r -a words <<< "$variant"
    binary=${words[-1]}
    if [[ $binary == *.xz ]]; then
      out=.dev/$(basename "$binary" .xz)
      xz -d -c "$binary" > "$out.unpacked" || exit 2
      if [[ -e $out ]] && ! cmp -s "$out" "$out.unpacked"; then
        for j in "${!targets[@]}"; do
          if [[ $j != "$i" && ${targets[$j]} == "${targets[$i]}" ]]; then
            rm -f "$out.unpacked"
            echo "$binary would replace $out, which the variant \"${*:j+1:1}\" runs: name one of them differently" >&2
            exit 2
          fi
        done
      fi
      mv "$out.unpacked" "$out" && chmod +x "$out"
      words[-1]=$out
    fi
    variants+=("${words[*]}")
    i=$((i + 1))
  done
}
