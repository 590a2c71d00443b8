"""Shell completion scripts for `flynn-host completion bash|zsh`: the commands, each one's
options, and job ids (from `flynn-host ps -a -q`, asked of the agent as the user types)."""
from __future__ import annotations

#: commands whose arguments are job ids
JOB_COMMANDS = ("logs", "log", "inspect", "stop", "kill", "signal", "wait", "rm", "attach")


def script(shell: str, options: dict) -> str:
    """`options`: command -> its option words."""
    return _bash(options) if shell == "bash" else _zsh(options)


def _bash(options: dict) -> str:
    cases = "\n".join(f'        {name}) opts="{" ".join(words)}" ;;'
                      for name, words in options.items())
    return f'''# bash completion for flynn-host: source <(flynn-host completion bash)
_flynn_host() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" command="" i opts=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -H|--addr|-addr|--token-file|--tls-ca) ((i++)) ;;
            -*) ;;
            *) command="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [ -z "$command" ]; then
        COMPREPLY=($(compgen -W "{" ".join(options)} -H --help --version daemon" -- "$cur"))
        return
    fi
    case "$command" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ " {" ".join(JOB_COMMANDS)} " == *" $command "* ]]; then
        COMPREPLY=($(compgen -W "$(flynn-host ps -a -q 2>/dev/null)" -- "$cur"))
    fi
}}
complete -F _flynn_host flynn-host
'''


def _zsh(options: dict) -> str:
    cases = "\n".join(f"        ({name}) opts=({' '.join(words)}) ;;"
                      for name, words in options.items())
    return f'''#compdef flynn-host
# zsh completion for flynn-host: flynn-host completion zsh > "${{fpath[1]}}/_flynn-host"
_flynn_host() {{
    local -a commands opts
    commands=({" ".join(options)})
    if (( CURRENT == 2 )); then
        compadd -- $commands daemon
        return
    fi
    local command=${{words[2]}}
    case $command in
{cases}
    esac
    if [[ $PREFIX == -* ]]; then
        compadd -- $opts
    elif [[ " {" ".join(JOB_COMMANDS)} " == *" $command "* ]]; then
        compadd -- ${{(f)"$(flynn-host ps -a -q 2>/dev/null)"}}
    fi
}}
compdef _flynn_host flynn-host 2>/dev/null || _flynn_host "$@"
'''
