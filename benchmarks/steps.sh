# Sourced by the GPU step scripts. `step NAME LIMIT CMD...` runs CMD under a LIMIT-second timeout
# (its whole process group), its output in $R/NAME.log, and appends "NAME rc=RC SECONDSs" to
# $STATUS (and prints it); a step that fails or times out does not stop the next.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$R/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$STATUS"
}
