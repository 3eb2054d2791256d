#!/bin/sh
# `voice-models pull` as the one-shot jobs run it, in the Triton image with the models volume read-write at
# VOICE_MODELS_DIR: the Kubernetes Job voice-models-pull (this file is its ConfigMap) and the compose service
# models-pull (which mounts this same file). The one place where the jobs' settings become the command's arguments:
#   names    the arguments when there are any, else VOICE_MODELS (names separated by spaces, never globbed)
#   licence  --accept-license only when VOICE_MODELS_ACCEPT_LICENSE is exactly 1: accepting a model's licence
#            (Spark-TTS-0.5B is CC BY-NC-SA 4.0, non-commercial) is the operator's explicit choice, never a
#            default. 0 or unset: not accepted, and voice-models refuses such a model; any other value is an error.
#   token    for gated repositories (Orpheus): HF_TOKEN from the environment (the Kubernetes Secret
#            voice-models-hf-token), replaced by the secret file VOICE_MODELS_TOKEN_FILE (compose's
#            /run/secrets/hf_token) when that file is not empty. The token is never printed.
set -eu

if [ "$#" -eq 0 ]; then
    set -f
    # shellcheck disable=SC2086 # split on spaces on purpose: the names
    set -- ${VOICE_MODELS:-}
    set +f
fi
if [ "$#" -eq 0 ]; then
    echo "voice-models-pull: no model named: set VOICE_MODELS (e.g. \"spark-tts-0.5b rvc-base\")" >&2
    exit 2
fi

case "${VOICE_MODELS_ACCEPT_LICENSE:-0}" in
    1) set -- "$@" --accept-license ;;
    0) echo "voice-models-pull: licences not accepted (VOICE_MODELS_ACCEPT_LICENSE=1 accepts them)" >&2 ;;
    *)
        echo "voice-models-pull: VOICE_MODELS_ACCEPT_LICENSE must be 0 or 1, not '${VOICE_MODELS_ACCEPT_LICENSE}'" >&2
        exit 2
        ;;
esac

token_file="${VOICE_MODELS_TOKEN_FILE:-/run/secrets/hf_token}"
if [ -s "$token_file" ]; then
    HF_TOKEN="$(cat "$token_file")"
    export HF_TOKEN
fi

echo "voice-models-pull: voice-models pull $* (into ${VOICE_MODELS_DIR:-./models})" >&2
exec voice-models pull "$@"
