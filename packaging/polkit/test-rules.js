// Unit test of 50-ccm-agent.rules with a stand-in for polkitd's `polkit` object:
// node packaging/polkit/test-rules.js   (run by scripts/ship-checks.sh when node is installed)
"use strict";
const fs = require("fs");
const path = require("path");
const rules = [];
const polkit = {
    Result: { YES: "yes", NO: "no", NOT_HANDLED: null },
    addRule: (f) => rules.push(f),
};
new Function("polkit", fs.readFileSync(path.join(__dirname, "50-ccm-agent.rules"), "utf8"))(polkit);
function decide(id, user, details) {
    const action = { id, lookup: (k) => details[k] };
    for (const r of rules) {
        const res = r(action, { user });
        if (res !== null && res !== undefined) return res;
    }
    return null;
}
const M = "org.freedesktop.systemd1.manage-units";
const cases = [
    [M, "ccm-agent", { unit: "nginx.service", verb: "reload" }, "yes"],
    [M, "ccm-agent", { unit: "apache2.service", verb: "reload" }, "yes"],
    [M, "ccm-agent", { unit: "nginx.service", verb: "restart" }, null],
    [M, "ccm-agent", { unit: "nginx.service", verb: "stop" }, null],
    [M, "ccm-agent", { unit: "sshd.service", verb: "reload" }, null],
    [M, "www-data", { unit: "nginx.service", verb: "reload" }, null],
    ["org.freedesktop.systemd1.manage-unit-files", "ccm-agent", { unit: "nginx.service", verb: "reload" }, null],
];
let failed = 0;
for (const [id, user, details, want] of cases) {
    const got = decide(id, user, details);
    if (got !== want) {
        failed++;
        console.error(`FAIL ${id} ${user} ${JSON.stringify(details)}: got ${got}, want ${want}`);
    }
}
if (failed) process.exit(1);
console.log(`polkit rule: ${cases.length} cases ok`);
