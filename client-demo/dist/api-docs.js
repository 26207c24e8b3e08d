// The API reference at /docs: the server's own /openapi.json, rendered by swagger-ui (served by
// canvashub itself, so it works without a network). "Try it out" calls this server.
window.addEventListener('load', () => {
  window.ui = window.SwaggerUIBundle({
    url: '/openapi.json',
    dom_id: '#api',
    deepLinking: true,
    tryItOutEnabled: false
  })
})
