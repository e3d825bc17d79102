#!/usr/bin/env bash
# Kaldi-style option parser.  Source it after declaring every option with its default:
#
#     stage=1          # the variable foo_bar is set by --foo-bar VALUE or --foo_bar VALUE
#     use_gpu=false    # a variable holding true/false only accepts true or false
#     help_message="Usage: $0 [options] <data-dir>"
#     . utils/parse_options.sh
#
# Options are read from the front of "$@" and removed from it; parsing stops at the first
# argument that does not start with "--" (or after a bare "--").  --name=value works too.
# --config FILE sources FILE (bash assignments) first, so the command line overrides it.
# --help (or -h) prints $help_message to stderr and exits 0.  An option whose variable
# is not set yet, a missing value or a non-boolean value for a boolean exits 1.

# --config FILE among the options is applied before any other option.
_po_args=("$@")
_po_i=0
while [ "${_po_i}" -lt "${#_po_args[@]}" ]; do
    case "${_po_args[_po_i]}" in
        --config=*) _po_config=${_po_args[_po_i]#--config=} _po_i=$((_po_i + 1)) ;;
        --config) _po_config=${_po_args[_po_i + 1]-} _po_i=$((_po_i + 2)) ;;
        --help | -h | --*=*) _po_i=$((_po_i + 1)); continue ;;
        --?*) _po_i=$((_po_i + 2)); continue ;;
        *) break ;;
    esac
    if [ -z "${_po_config}" ] || [ ! -r "${_po_config}" ]; then
        echo "$0: cannot read config file '${_po_config}' given by --config" >&2
        exit 1
    fi
    # shellcheck disable=SC1090
    . "${_po_config}"
done

while [ $# -gt 0 ]; do
    case "$1" in
        --help | -h)
            printf '%s\n' "${help_message:-No help found.}" >&2
            exit 0
            ;;
        --)
            shift
            break
            ;;
        --*=*)
            _po_name=${1%%=*}
            _po_value=${1#*=}
            shift
            ;;
        --*)
            if [ $# -lt 2 ]; then
                echo "$0: option $1 needs a value" >&2
                exit 1
            fi
            _po_name=$1
            _po_value=$2
            shift 2
            ;;
        *) break ;;
    esac
    _po_opt=${_po_name}
    _po_name=${_po_name#--}
    _po_name=${_po_name//-/_}
    [ "${_po_name}" = config ] && continue # already applied above
    if ! [[ ${_po_name} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${!_po_name+set}" ]; then
        echo "$0: invalid option ${_po_opt}" >&2
        exit 1
    fi
    if [[ ${!_po_name} == true || ${!_po_name} == false ]] && [[ ${_po_value} != true && ${_po_value} != false ]]; then
        echo "$0: option ${_po_opt} expects true or false, got '${_po_value}'" >&2
        exit 1
    fi
    printf -v "${_po_name}" '%s' "${_po_value}"
done

unset _po_args _po_i _po_config _po_name _po_value _po_opt
true
