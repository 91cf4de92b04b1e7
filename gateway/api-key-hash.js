// SHA-256 of the request's X-API-Key header, for the key map of gateway/nginx.conf.template.
// feedbackbot.keys.hash_key computes the same hex digest when it stores a key, so the gateway
// finds a key by its hash and no file on disk contains the key itself. Needs njs 0.7 or
// later (Debian 12: libnginx-mod-http-js).
import crypto from 'crypto';
import qs from 'querystring';

// The admin pages under /admin also accept the key from the session cookie that signIn sets.
// Only URIs under /admin read the cookie, so the JSON API under /v1 never authenticates a
// request by cookie, and a cross-site page cannot make a browser call it with the user's key.
var SESSION_COOKIE = 'feedbackbot_session';
var SESSION_PATH = '/admin';
// Keys from `feedbackbot keys` are "fbk_" plus URL-safe base64. Anything else cannot be a
// key and could break the Set-Cookie header, so signIn rejects it.
var KEY_PATTERN = /^[A-Za-z0-9._~-]{1,256}$/;

function isAdminPage(uri) {
    return uri === SESSION_PATH || uri.startsWith(SESSION_PATH + '/');
}

function sha256Key(r) {
    var key = r.variables.http_x_api_key;
    if (!key && isAdminPage(r.uri)) {
        key = r.variables['cookie_' + SESSION_COOKIE];
    }
    if (!key) {
        // No header or cookie: the map's default, an empty role, applies.
        return '';
    }
    return crypto.createHash('sha256').update(key).digest('hex');
}

// "1" unless the request carries an Origin header for another host. Browsers send Origin
// with every POST, so a cross-site form post to an admin page is rejected even where
// SameSite=Strict is not supported. Clients without Origin (curl with X-API-Key) pass.
// The scheme is not compared because a TLS-terminating proxy in front of the gateway
// makes the browser's https origin arrive over http.
function sameOrigin(r) {
    var origin = r.headersIn.Origin;
    if (origin === undefined) {
        return '1';
    }
    var host = origin.replace(/^https?:\/\//, '');
    return host === r.headersIn.Host ? '1' : '0';
}

function sessionCookie(r, value, extra) {
    // Secure when the browser reached the gateway over TLS, directly or through a proxy
    // that sets X-Forwarded-Proto.
    var secure = r.variables.scheme === 'https' || r.headersIn['X-Forwarded-Proto'] === 'https';
    return SESSION_COOKIE + '=' + value + '; Path=' + SESSION_PATH + '; HttpOnly; SameSite=Strict'
        + (secure ? '; Secure' : '') + extra;
}

// POST /admin/session with the form field api_key: stores the key in the session cookie and
// redirects to /admin, which checks the key's role like X-API-Key and redirects back to the
// sign-in page when the key is unknown. The key never reaches the Serve graph.
function signIn(r) {
    if (r.method !== 'POST') {
        r.headersOut.Allow = 'POST';
        r.return(405, '{"error":{"code":"method_not_allowed","message":"Sign in with POST from the form at /admin/sign-in.","request_id":"'
            + r.variables.feedback_request_id + '"}}');
        return;
    }
    if (sameOrigin(r) !== '1') {
        r.return(403, '{"error":{"code":"forbidden","message":"Cross-site sign-in is not allowed; sign in from /admin/sign-in on this host.","request_id":"'
            + r.variables.feedback_request_id + '"}}');
        return;
    }
    var fields = qs.parse(r.requestText || '');
    var key = fields.api_key;
    if (Array.isArray(key)) {
        key = key[0];
    }
    key = (key || '').trim();
    if (!KEY_PATTERN.test(key)) {
        r.return(303, SESSION_PATH + '/sign-in?error=' + (key ? 'unknown-key' : 'missing-key'));
        return;
    }
    r.headersOut['Set-Cookie'] = sessionCookie(r, key, '');
    r.headersOut['Cache-Control'] = 'no-store';
    r.return(303, SESSION_PATH);
}

// POST /admin/sign-out: expires the session cookie and redirects to the sign-in page.
function signOut(r) {
    if (r.method !== 'POST') {
        r.headersOut.Allow = 'POST';
        r.return(405, '{"error":{"code":"method_not_allowed","message":"Sign out with POST from the button on /admin.","request_id":"'
            + r.variables.feedback_request_id + '"}}');
        return;
    }
    if (sameOrigin(r) !== '1') {
        r.return(403, '{"error":{"code":"forbidden","message":"Cross-site sign-out is not allowed; sign out from /admin on this host.","request_id":"'
            + r.variables.feedback_request_id + '"}}');
        return;
    }
    r.headersOut['Set-Cookie'] = sessionCookie(r, '', '; Max-Age=0');
    r.headersOut['Cache-Control'] = 'no-store';
    r.return(303, SESSION_PATH + '/sign-in?signed-out=1');
}

export default { sha256Key, sameOrigin, signIn, signOut };
