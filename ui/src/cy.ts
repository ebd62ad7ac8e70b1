// Cytoscape.js with the dagre (layered) layout registered. Imported lazily by the service
// graph page so the other pages do not load the graph library.

import cytoscape from "cytoscape";
import dagre from "cytoscape-dagre";

cytoscape.use(dagre);

export default cytoscape;
