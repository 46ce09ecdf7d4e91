// Draws the API reference at /docs from the OpenAPI document this API
// serves beside it. A file of its own, not an inline script, so the page's
// Content-Security-Policy can allow scripts from this origin only.
"use strict";
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // The default sends the document to validator.swagger.io; the policy
  // forbids other origins, and the document is checked by the tests.
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
