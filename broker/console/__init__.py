"""The focal-point console: a server-rendered web application each node serves to its people.

What it is for
    Officers read, send and answer messages; supervisors also release sensitive messages
    (four eyes); auditors see the audit log and statistics, never content. Every action runs
    under the signed-in person and goes through the node's public methods (send, explain,
    read) and the store's methods, so the console decides nothing the node would not.

What it must never do
    Trust a name the browser declares, render a peer's text as markup, run inline script or
    style (the Content-Security-Policy forbids it), or send a message policy denies.
"""
