/*
 * hullguard built-in rules for common Linux container threats.
 *
 * Every rule names its detection in `meta`: `name` (journal name), `type`
 * (journal type) and `suspicion`. Strings spell one character as a \xNN
 * escape, so this file never contains the text it looks for and does not
 * trip scanners (including hullguard) that read it.
 *
 * Rules must stay tight: the test suite scans /usr/bin and /usr/lib of a
 * Debian host and requires zero matches.
 */

rule hg_coinminer_config
{
    meta:
        name = "Linux/CoinMiner.Config"
        type = "Coin miner"
        suspicion = "inf"
        description = "Mining pool configuration: a stratum pool URL next to miner settings"

    strings:
        $pool = /stratum\+(tcp|ssl|tls):\/\/[A-Za-z0-9_.\-]{1,253}:[0-9]{2,5}/ nocase
        $k_pools = /"pools"\s*:\s*\[/
        $k_url = /"url"\s*:\s*"stratum\+/
        $k_user = /"user"\s*:\s*"/
        $k_pass = /"pass"\s*:\s*"/
        $k_algo = /"algo"\s*:\s*"/
        $k_donate = /"donate-level"\s*:/
        $k_coin = /"coin"\s*:\s*"/
        $k_rig = /"rig-id"\s*:/
        $x_xmrig = "xmr\x69g" nocase
        $x_cli_o = /\s-o\s+stratum\+/
        $x_cli_u = /\s(-u|--user)\s+[0-9A-Za-z]{30,}/

    condition:
        $pool and (
            2 of ($k_*) or
            ($x_xmrig and 1 of ($k_*, $x_cli_*)) or
            ($x_cli_o and $x_cli_u)
        )
}

rule hg_reverse_shell_script
{
    meta:
        name = "Linux/ReverseShell.Script"
        type = "Trojan"
        suspicion = "inf"
        description = "Reverse shell one-liners: interactive shell wired to a TCP connection"

    strings:
        // interactive shell (bash/sh/zsh/ksh -i) redirected to a bash /dev/tcp or /dev/udp path
        $devtcp = /\b(ba|z|k|da)?sh\s+-i\s+[0-9]?[<>]?&\s*\/dev\/(tcp|udp)\/[A-Za-z0-9_.\-]{1,253}\/[0-9]{1,5}\s+[0-9]?[<>]&\s*[0-9]/
        $devtcp_exec = /exec\s+[0-9]{1,3}<>\/dev\/tcp\/[A-Za-z0-9_.\-]{1,253}\/[0-9]{1,5}\s*;[^\n]{0,80}\b(ba|z|k|da)?sh\s+<&\s*[0-9]{1,3}\s+>&\s*[0-9]{1,3}/
        // netcat/ncat told to execute a shell (-e or -c) on connect
        $nc_e = /\b(nc|ncat|netcat)(\.traditional|\.openbsd)?\s+([^\s|;&]{1,80}\s+){0,4}-[ec]\s+(\/usr)?\/bin\/(ba|z|k|da)?sh\b/
        // named pipe looping an interactive shell through netcat
        $fifo = /mkfifo\s+[^\s;]{1,80}\s*;\s*cat\s+[^\s|]{1,80}\s*\|\s*(\/usr)?\/bin\/(ba|z|k|da)?sh\s+-i\s+2>&1\s*\|\s*(nc|ncat|netcat|telnet)\s/
        // socat joining an exec address and a tcp address, either order
        $socat1 = /\bsocat\s+[^\n]{0,80}exec:[^\n]{0,120}\btcp[46]?(-connect)?:[A-Za-z0-9_.\-]{1,253}:[0-9]{1,5}/ nocase
        $socat2 = /\bsocat\s+[^\n]{0,80}\btcp[46]?(-connect)?:[A-Za-z0-9_.\-]{1,253}:[0-9]{1,5}[^\n]{0,40}\bexec:[^\n]{0,20}(ba|z|k|da)?sh\b/ nocase
        // python: a socket, connect, then a pty-spawned shell or dup2'ed fds plus a shell
        $py_sock = /socket\.socket\s*\(/
        $py_conn = /\.connect\s*\(\s*\(/
        $py_pty = /pty\.spawn\s*\(\s*["'](\/usr)?\/bin\/(ba|z|k|da)?sh["']/
        $py_dup = /os\.dup2\s*\(\s*[A-Za-z_]{1,20}\.fileno\s*\(\s*\)\s*,\s*[0-2]\s*\)/
        $py_sh = /(subprocess\.(call|Popen|run)|os\.(system|exec[lv]p?e?))\s*\(\s*\[?\s*["'](\/usr)?\/bin\/(ba|z|k|da)?sh["']/
        // perl: connect, standard streams reopened onto the socket, exec of a shell
        $pl_open = /open\s*\(\s*STD(IN|OUT|ERR)\s*,\s*["']>&/
        $pl_exec = /exec\s*\(?\s*["'](\/usr)?\/bin\/(ba|z|k|da)?sh\s+-i["']/
        $pl_sock = /connect\s*\(\s*[A-Za-z_]{1,20}\s*,\s*sockaddr_in\s*\(/
        // php: fsockopen followed directly by running an interactive shell
        $php_rs = /fsockopen\s*\([^)]{1,200}\)\s*;\s*(exec|shell_exec|system|passthru|popen|proc_open)\s*\(\s*["'](\/usr)?\/bin\/(ba|z|k|da)?sh\s+-i/

    condition:
        $devtcp or $devtcp_exec or $nc_e or $fifo or $socat1 or $socat2 or
        ($py_sock and $py_conn and ($py_pty or ($py_dup and $py_sh))) or
        ($pl_sock and $pl_open and $pl_exec) or
        $php_rs
}

rule hg_php_webshell
{
    meta:
        name = "PHP/WebShell.Generic"
        type = "Backdoor"
        suspicion = "inf"
        description = "PHP code that evaluates or executes request parameters"

    strings:
        $tag = "<\x3f"
        // eval/assert of decoded request data
        $eval_dec = /\b(eval|assert)\s*\(\s*(@\s*)?(base64_decode|gzinflate|gzuncompress|gzdecode|str_rot13|strrev|hex2bin)\s*\(\s*(@\s*)?\$_(POST|GET|REQUEST|COOKIE|SERVER)\s*\[/ nocase
        // eval/assert of raw request data
        $eval_req = /\b(eval|assert)\s*\(\s*(@\s*)?\$_(POST|GET|REQUEST|COOKIE)\s*\[/ nocase
        // command execution functions called on request data
        $exec_req = /\b(system|passthru|shell_exec|exec|popen|proc_open|pcntl_exec)\s*\(\s*(@\s*)?\$_(GET|POST|REQUEST|COOKIE)\s*\[/ nocase
        // backtick execution of request data
        $backtick = /`\s*\$_(GET|POST|REQUEST)\s*\[[^\]]{1,40}\]\s*`/
        // preg_replace with the e modifier on request data
        $preg_e = /preg_replace\s*\(\s*["'].{1,80}\/e["']\s*,\s*\$_(GET|POST|REQUEST|COOKIE)\s*\[/ nocase

    condition:
        $tag and any of ($eval_dec, $eval_req, $exec_req, $backtick, $preg_e)
}

rule hg_jsp_webshell
{
    meta:
        name = "JSP/WebShell.Generic"
        type = "Backdoor"
        suspicion = "inf"
        description = "JSP page that runs a command taken from a request parameter"

    strings:
        $tag = "<\x25"
        $exec = /Runtime\.getRuntime\s*\(\s*\)\s*\.exec\s*\(\s*request\.getParameter\s*\(/
        $pb = /new\s+ProcessBuilder\s*\([^)]{0,80}request\.getParameter\s*\(/

    condition:
        $tag and ($exec or $pb)
}
